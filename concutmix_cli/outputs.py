"""Where a command may write an output file: the one check every command and every library
function that writes a file runs before any work (`eval --out`, `inspect-labels --out/--image/
--csv`, `predict --out`, `export --out` / `api.export`, the pictures of `plot` / `eval --plot`).

Why: an output path is the user's choice, and a typo must not destroy what the command reads
(`eval RUN --out RUN/last.safetensors` once replaced the model with JSON; `predict RUN imgs/
--out imgs/a.png` replaced an input image), a file that a run or a prepared dataset owns, a
special file (a device, a FIFO, a terminal behind /proc/self/fd/1: the atomic temp-and-rename
would replace the node with a regular file), or another output of the same command. An existing
unrelated file is replaced only with `force` (`--force`), the same rule for every command.

The check returns the path to write: a symlink to a regular file is written through (the link
stays and points to the new content), as `cp` and shell redirection do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import file_kind

RUN_FILES = frozenset({"config.json", "manifest.json", "metrics.jsonl", "last.safetensors",
                       "best.safetensors", "checkpoints.json"})
"""The files a run folder owns at its top level (and everything in its checkpoints/)."""


def is_run_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(
        (folder / name).exists() for name in ("checkpoints.json", "last.safetensors",
                                              "metrics.jsonl", "checkpoints"))


def owner_of(path: Path) -> str | None:
    """What owns `path`, if a run folder or a prepared dataset does ("run folder RUN", ...)."""
    from concutmix_cli.data.longtail import prepared_files
    from concutmix_cli.engine.runlock import LOCK_NAME

    path = Path(os.path.realpath(path))
    folder = path.parent
    if folder.name == "checkpoints" and is_run_folder(folder.parent):
        return f"run folder {folder.parent}"
    if is_run_folder(folder) and (path.name in RUN_FILES or path.name == LOCK_NAME
                                  or path.name == "checkpoints"):
        return f"run folder {folder}"
    owned = prepared_files(folder)
    if owned is not None and path.name in owned:
        return f"prepared dataset {folder}"
    return None


def special_kind(path: Path) -> str | None:
    """What `path` is when it exists and is not a regular file (links followed): "a FIFO",
    "a character device", ... (`fileio.file_kind`)."""
    try:
        return file_kind(os.stat(path).st_mode)
    except OSError:
        return None


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def dataset_images(folder: Path | None) -> tuple[str, frozenset[str]] | None:
    """(image root, the relative paths its split lists name) of a prepared dataset that keeps
    image files (ImageNet-like lists, a user's large images), so that no output lands on one of
    them; None for other folders. Best effort: an unreadable folder names no images."""
    from concutmix_cli.data.lists import read_split_list

    if folder is None:
        return None
    try:
        body = json.loads((Path(folder) / "manifest.json").read_text())
        if body.get("kind") != "lists" or not body.get("root"):
            return None
        names = {os.path.normpath(rel) for listed in (body.get("splits") or {}).values()
                 if isinstance(listed, str) and "/" not in listed
                 for rel, _ in read_split_list(Path(folder) / listed)}
        return os.path.realpath(body["root"]), frozenset(names)
    except (OSError, ValueError, AttributeError, TypeError, UserError):
        return None


def recorded_data(run_or_weights: Path) -> Path | None:
    """The data folder a run folder (its config.json) or a weights file (its metadata) trained
    on, for the output check; None when it cannot be told (the command reports that itself)."""
    path = Path(run_or_weights)
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
        else:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                config = json.loads((handle.metadata() or {}).get("config", "null"))
        return Path(config["data"]["path"])
    except Exception:  # noqa: BLE001 - best effort; loading the run reports what is wrong
        return None


def run_inputs(run: Path, data: Path | None = None) -> dict[str, list]:
    """What a command that loads `run` (a run folder or weights file) and evaluates it on `data`
    (default: the data it trained on) reads, as `check_outputs`' `reads` and `data`."""
    return {"reads": [run, *([data] if data else [])], "data": [data or recorded_data(run)]}


def check_outputs(outputs: dict[str, Path | None], reads: Iterable[Path] = (), *,
                  force: bool = False, data: Iterable[Path | None] = ()) -> dict[str, Path]:
    """Refuse, before any work, an output that is a folder, a special file, a file this command
    reads (`reads`, or an image that a prepared dataset in `data` names), a file a run or a
    prepared dataset owns, the same file as another output, or (without `force`) any other file
    that exists. Returns {option: the path to write}, symlinks resolved. `option` is the
    command-line option (`--out`) or the library parameter (`out`) the message names."""
    reads = [Path(r) for r in reads]
    image_sets = [found for found in map(dataset_images, data) if found is not None]
    seen: dict[str, Path] = {}
    targets: dict[str, Path] = {}
    for option, given in outputs.items():
        if given is None:
            continue
        path = Path(given)

        def refuse(why: str) -> UserError:
            return UserError(f"{option} {path} {why}",
                             param=None if option.startswith("-") else option)

        if path.is_dir():
            raise refuse("is a folder; give a file name")
        above = next((p for p in Path(os.path.abspath(path)).parents if os.path.exists(p)), None)
        if above is not None and not above.is_dir():
            raise refuse(f"cannot be created: {above} is a file, not a folder")
        kind = special_kind(path)
        if kind is not None:
            raise refuse(f"is {kind}, not a regular file; outputs are written to regular files "
                         "only (writing would replace the node): give a file path")
        real = os.path.realpath(path)
        if os.path.exists(path) and not os.path.exists(real):
            # /proc/self/fd/1 and the like: a link to an open pipe or deleted file, which no
            # path names; writing "through" it would create a stray file
            raise refuse("is a link to an open file of a process, not to a file path; give a "
                         "file path")
        owner = owner_of(path)
        if owner is not None:
            raise refuse(f"belongs to the {owner}; write the output outside it (or under "
                         "another name)")
        for source in reads:
            if _same_file(path, source):
                raise refuse(f"is {source}, which this command reads; write the output to "
                             "another file")
        for root, names in image_sets:
            inside = os.path.relpath(real, root)
            if not inside.startswith(os.pardir) and inside in names:
                raise refuse(f"is an image of the dataset this command reads (under {root}); "
                             "write the output to another file")
        for other, earlier in seen.items():
            if _same_file(path, earlier):
                raise UserError(f"{option} and {other} name the same file {path}; give each "
                                "output its own file")
        if os.path.exists(path) and not force:
            raise refuse("already exists; replace it with --force (force=True in Python), or "
                         "choose another file")
        seen[option] = path
        targets[option] = Path(real)
    return targets

"""Where a command may write its output files (`eval --out`, `inspect-labels --out/--image/--csv`).

Why: an output path is the user's choice, and a typo must not destroy what the command reads
(`eval RUN --out RUN/last.safetensors` once replaced the model with JSON), a file that a run or a
prepared dataset owns, or another output of the same command. Checked before any work is done.
"""

from __future__ import annotations

import os
from pathlib import Path

from concutmix_cli.errors import UserError

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


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path | None], reads: list[Path]) -> None:
    """Raise UserError if an output is a folder, a file this command reads, a file a run or a
    prepared dataset owns, or the same file as another output."""
    seen: dict[str, Path] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{option} {path} is a folder; give a file name")
        for source in reads:
            if _same_file(path, source):
                raise UserError(f"{option} {path} is {source}, which this command reads; write "
                                "the output to another file")
        owner = owner_of(path)
        if owner is not None:
            raise UserError(f"{option} {path} belongs to the {owner}; write the output outside "
                            "it (or under another name)")
        for other, earlier in seen.items():
            if _same_file(path, earlier):
                raise UserError(f"{option} and {other} name the same file {path}; give each "
                                "output its own file")
        seen[option] = path

"""What every dataset route shares when it writes a prepared folder: the split files, their
statistics, short texts for messages, and the atomic swap of the finished folder into place.

Routes (data/routes/) and the libraries they call (own.py, lists.py) import from here; nothing
here imports a route, so data flows one way.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save

from concutmix_cli.data import longtail
from concutmix_cli.data.sources import ArraySource
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import atomic_write_bytes, folder_mode, sha256_bytes

# ----------------------------------------------------------------------------- split files


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] (float64 accumulation, chunked to bound memory)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk**2).sum(0)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def save_split(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> str:
    """Write `name`.safetensors (uint8 images, int64 labels); returns its sha256."""
    # serialized here and written by our writer: safetensors' own file writer reports a full
    # disk as a SafetensorError, not as the OSError that names the file
    data = save({
        "images": torch.from_numpy(np.ascontiguousarray(images)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    })
    atomic_write_bytes(folder / f"{name}.safetensors", data)
    return sha256_bytes(data)


def stage_arrays(staging_dir: Path, src: ArraySource, imbalance: float, seed: int,
                 n_max: int) -> dict[str, Any]:
    """The LDAM-DRW long-tailed subset of a balanced source (exponential profile from `n_max`
    down, selected with `seed`), stored as arrays; the manifest fields but imbalance and seed."""
    num_classes = len(src.classes)
    counts = longtail.exponential_counts(n_max, num_classes, imbalance)
    indices = longtail.select_longtail_indices(src.train_y, counts, seed)
    train_x, train_y = src.train_x[indices], src.train_y[indices]
    mean, std = channel_stats(src.train_x)
    files = {
        "train.safetensors": save_split(staging_dir, "train", train_x, train_y),
        "test.safetensors": save_split(staging_dir, "test", src.test_x, src.test_y),
    }
    return {
        "kind": "arrays",
        "num_classes": num_classes,
        "classes": src.classes,
        "image_size": int(src.train_x.shape[1]),
        "mean": mean,
        "std": std,
        "train_counts": longtail.class_counts(train_y, num_classes),
        "val_counts": None,
        "test_counts": longtail.class_counts(src.test_y, num_classes),
        "train_indices": indices.tolist(),
        "splits": {"train": "train.safetensors", "val": None, "test": "test.safetensors"},
        "files": files,
        "source": src.info,
    }


# ----------------------------------------------------------------------------- messages


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters (with "..."), so one bad value cannot flood a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_gaps(present: np.ndarray, num_classes: int, limit: int) -> list[int]:
    """The first ``limit`` ids in 0..num_classes-1 absent from the sorted unique ``present``."""
    gaps: list[int] = []
    expected = 0
    for value in present.tolist() + [num_classes]:
        while expected < value and len(gaps) < limit:
            gaps.append(expected)
            expected += 1
        if len(gaps) >= limit:
            break
        expected = value + 1
    return gaps


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it, links resolved."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the atomic swap


def check_replaceable(out: Path, force: bool, inputs: dict[str, Path | None]) -> None:
    """Refuse to write `out` unless it is absent, empty, or (with --force) a prepared dataset
    that holds only what prepare wrote and none of this command's inputs.

    `--force` deletes the old folder, so it must never hit a user's own folder: a folder is
    replaceable only if its manifest.json says it is a concutmix prepared dataset."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    owned = longtail.prepared_files(out)
    if owned is None:
        raise UserError(
            f"--out {out} is not a prepared dataset (no concutmix manifest.json), and --force "
            "only replaces folders written by `concutmix prepare`; choose another --out"
        )
    foreign = [name for name in present if name not in owned]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"--out {out} holds {len(foreign)} file(s) that prepare did not write ({shown}); "
            "--force would delete them: move them away or choose another --out"
        )
    for option, path in inputs.items():
        if path is not None and inside(path, out):
            raise UserError(f"{option} {path} is inside --out {out}, which --force would "
                            f"replace; choose another --out")


def lock_path(out: Path) -> Path:
    """`prepare --out OUT` holds OUT's lock beside it (OUT itself is swapped by a rename)."""
    return out.parent / f".{out.name}.concutmix.lock"


def clean_stale_staging(out: Path) -> list[str]:
    """Remove what a prepare into `out` that was killed left beside it (call with `out`'s lock
    held: no live prepare owns these). A previous dataset that a kill left aside mid-swap
    (`.OUT.old-*/old` with OUT gone) is put back first. Returns what was done."""
    ours = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[A-Za-z0-9_]{{8}}")  # mkdtemp's
    found = sorted((p for p in out.parent.iterdir() if ours.fullmatch(p.name)
                    and p.is_dir() and not p.is_symlink()), key=lambda p: p.name)
    done: list[str] = []
    for trash in (p for p in found if ".old-" in p.name):
        if not out.exists() and not out.is_symlink() and (trash / "old").is_dir():
            os.replace(trash / "old", out)
            done.append(f"put back {out}, which a killed prepare had moved aside")
    for leftover in found:
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover}, left by a prepare that was killed")
    return done


def write_atomically(out: Path, stage: Callable[[Path], None], force: bool,
                     inputs: dict[str, Path | None] | None = None) -> list[str]:
    """Build the folder under a temporary sibling name, then rename it into place; on any
    failure the old folder (if any) is back in place and no temporary folder is left. One
    prepare at a time per `out` (a lock beside it); what a killed one left is cleaned first.
    Returns notes on what was done besides (a lock taken over, leftovers removed)."""
    from concutmix_cli.locking import ExclusiveLock

    out = Path(os.path.abspath(out))  # `--out .` has a name and a parent once absolute
    if out == out.parent:
        raise UserError(f"--out {out}: the filesystem root cannot be a dataset folder")
    check_replaceable(out, force, inputs or {})  # before creating anything
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = ExclusiveLock(lock_path(out), f"--out {out}")
    notes = [note for note in [lock.acquire()] if note]
    try:
        notes += clean_stale_staging(out)
        check_replaceable(out, force, inputs or {})  # another prepare may have finished meanwhile
        staging_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        trash: Path | None = None
        try:
            stage(staging_dir)
            os.chmod(staging_dir, folder_mode())  # mkdtemp makes 0700: share as the umask allows
            if out.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, trash / "old")
                try:
                    os.replace(staging_dir, out)
                except BaseException:
                    os.replace(trash / "old", out)  # put the old dataset back
                    raise
            else:
                os.replace(staging_dir, out)
        finally:
            for leftover in (staging_dir, trash):
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
    finally:
        lock.release()
    return notes

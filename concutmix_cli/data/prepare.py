"""`concutmix prepare`: build a long-tailed benchmark folder (images + manifest), atomically.

CIFAR and synthetic folders are self-contained (uint8 arrays in safetensors), so training never
needs the source again. List datasets (ImageNet-LT, Places-LT, iNat 2018) keep their split lists
and the image root. A user's own images (`folder`, `csv`: own.py) become either.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

from concutmix_cli.data import longtail, sources
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import atomic_write_bytes, atomic_write_text, folder_mode, json_text, sha256_bytes

ARRAY_DATASETS = ("cifar10-lt", "cifar100-lt", "synthetic-lt")
LIST_DATASETS = ("imagenet-lt", "places-lt", "inat2018")
OWN_DATASETS = ("folder", "csv")
DATASETS = ARRAY_DATASETS + LIST_DATASETS + OWN_DATASETS
SYNTHETIC_N_MAX = 200
MAX_SEED = 2**32 - 1
"""The LDAM-DRW selection seeds numpy's legacy RNG, which takes 0 .. 2**32 - 1."""
MAX_SYNTHETIC_IMAGES = 100_000
"""synthetic-lt is built in memory as float32 (12 KB an image): a cap that keeps it near 1 GB."""


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    """What prepare did besides writing `out` (a killed prepare's leftovers cleaned, ...)."""


def default_out(dataset: str, imbalance: float, named_by: Path | None = None) -> Path:
    if dataset in OWN_DATASETS:  # data/<the image folder's or the training CSV's name>
        name = Path(os.path.abspath(named_by)).stem if named_by is not None else dataset
        return Path("data") / (name or dataset)
    if dataset in LIST_DATASETS:
        return Path("data") / dataset
    return Path("data") / f"{dataset}-if{imbalance:g}"


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
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


def _save_split(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> str:
    # serialized here and written by our writer: safetensors' own file writer reports a full
    # disk as a SafetensorError, not as the OSError that names the file
    data = save({
        "images": torch.from_numpy(np.ascontiguousarray(images)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    })
    atomic_write_bytes(folder / f"{name}.safetensors", data)
    return sha256_bytes(data)


def _stage_arrays(
    staging: Path, dataset: str, src: sources.ArraySource, imbalance: float, seed: int, n_max: int
) -> dict[str, Any]:
    num_classes = len(src.classes)
    counts = longtail.exponential_counts(n_max, num_classes, imbalance)
    indices = longtail.select_longtail_indices(src.train_y, counts, seed)
    train_x, train_y = src.train_x[indices], src.train_y[indices]
    mean, std = _channel_stats(src.train_x)
    files = {
        "train.safetensors": _save_split(staging, "train", train_x, train_y),
        "test.safetensors": _save_split(staging, "test", src.test_x, src.test_y),
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


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


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
        if path is not None and _inside(path, out):
            raise UserError(f"{option} {path} is inside --out {out}, which --force would "
                            f"replace; choose another --out")


def _lock_path(out: Path) -> Path:
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


def _write_atomically(out: Path, stage: callable, force: bool,
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
    lock = ExclusiveLock(_lock_path(out), f"--out {out}")
    notes = [note for note in [lock.acquire()] if note]
    try:
        notes += clean_stale_staging(out)
        check_replaceable(out, force, inputs or {})  # another prepare may have finished meanwhile
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        trash: Path | None = None
        try:
            stage(staging)
            os.chmod(staging, folder_mode())  # mkdtemp makes 0700: share as the umask allows
            if out.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, trash / "old")
                try:
                    os.replace(staging, out)
                except BaseException:
                    os.replace(trash / "old", out)  # put the old dataset back
                    raise
            else:
                os.replace(staging, out)
        finally:
            for leftover in (staging, trash):
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
    finally:
        lock.release()
    return notes


def check_numbers(dataset: str, imbalance: float, seed: int, classes: int,
                  n_max: int | None) -> None:
    """Every number of `prepare`, before anything is read or written."""
    if not math.isfinite(imbalance):
        raise UserError(f"--imbalance must be a finite number (got {imbalance:g})")
    if imbalance < 1:
        raise UserError(f"--imbalance must be at least 1 (got {imbalance:g})")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED} (got {seed})")
    if n_max is not None and n_max < 1:
        raise UserError(f"--n-max must be at least 1 (got {n_max})")
    if dataset == "synthetic-lt":
        if not 2 <= classes <= 1000:
            raise UserError(f"--classes must be between 2 and 1000 (got {classes})")
        pool = classes * ((n_max or SYNTHETIC_N_MAX) + 50)
        if pool > MAX_SYNTHETIC_IMAGES:
            raise UserError(
                f"synthetic-lt with --classes {classes} and --n-max {n_max} would build "
                f"{pool:,} images; the built-in generator is capped at {MAX_SYNTHETIC_IMAGES:,}"
            )
    if dataset in sources.CIFAR_N_MAX and n_max is not None and n_max > sources.CIFAR_N_MAX[dataset]:
        raise UserError(f"--n-max {n_max}: {dataset} has {sources.CIFAR_N_MAX[dataset]} "
                        f"training images per class")
    if dataset in ARRAY_DATASETS:
        largest = n_max or (SYNTHETIC_N_MAX if dataset == "synthetic-lt"
                            else sources.CIFAR_N_MAX[dataset])
        counts = longtail.exponential_counts(largest, classes if dataset == "synthetic-lt"
                                             else sources.CIFAR_CLASSES[dataset], imbalance)
        if min(counts) < 1:
            raise UserError(
                f"--imbalance {imbalance:g} with {largest} images in the largest class leaves "
                f"class {counts.index(min(counts))} with no training image; use a smaller --imbalance "
                f"(at most {largest})"
            )


def prepare(
    dataset: str,
    out: Path | None = None,
    imbalance: float = 100.0,
    seed: int = 0,
    source: Path | None = None,
    root: Path | None = None,
    download: bool = True,
    classes: int = 10,
    n_max: int | None = None,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_list: Path | None = None,
    force: bool = False,
    train: Path | None = None,
    val: Path | None = None,
    test: Path | None = None,
    image_size: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    skip_bad: bool = False,
    callbacks=None,
) -> PrepareResult:
    """Build `out` for `dataset`; returns the manifest that was written.

    `folder` / `csv` (a user's own images, data/own.py) take `root`, `train` (csv), `val`,
    `test`, `image_size`, `val_fraction`, `test_fraction`, `seed` and `skip_bad`; `callbacks`
    receive a `WorkProgress` event per decoded image."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    own_options = {"--train": train, "--val": val, "--test": test, "--image-size": image_size,
                   "--val-fraction": val_fraction, "--test-fraction": test_fraction,
                   "--skip-bad": skip_bad or None}
    if dataset in OWN_DATASETS:
        from concutmix_cli.data import own

        image_size = own.DEFAULT_IMAGE_SIZE if image_size is None else image_size
        val_fraction, test_fraction = val_fraction or 0.0, test_fraction or 0.0
        own.check_options(image_size, val_fraction, test_fraction, seed, val, test)
        if root is None or (dataset == "csv" and train is None):
            raise UserError("prepare folder needs --root (one sub-folder per class)"
                            if dataset == "folder" else
                            "prepare csv needs --train (a path,label CSV file) and --root (the "
                            "folder its paths are relative to)")
        if dataset == "folder" and train is not None:
            raise UserError("prepare folder takes the training images from --root; --train is "
                            "for prepare csv")
    else:
        given = [option for option, value in own_options.items() if value is not None]
        if given:
            raise UserError(f"{given[0]} is an option of prepare folder and prepare csv, not of "
                            f"{dataset}")
        check_numbers(dataset, imbalance, seed, classes, n_max)
    out = Path(out) if out is not None else default_out(
        dataset, imbalance, root if dataset == "folder" else train)
    if dataset == "folder" and _inside(out, root):
        raise UserError(f"--out {out} is inside --root {root}, where it would become a class "
                        "folder; choose an --out outside the image folder")

    def stage(staging: Path) -> None:
        if dataset in OWN_DATASETS:
            fields = own.stage_own(
                staging, dataset, root=Path(root),
                csvs={"train": train, "val": val, "test": test} if dataset == "csv" else None,
                val=val if dataset == "folder" else None, test=test if dataset == "folder" else None,
                image_size=image_size, val_fraction=val_fraction, test_fraction=test_fraction,
                seed=seed, skip_bad=skip_bad, callbacks=callbacks)
            used_imbalance = fields.pop("imbalance")
            used_seed = fields.pop("split_seed")
        elif dataset in LIST_DATASETS:
            from concutmix_cli.data import lists

            if root is None or train_list is None:
                raise UserError(f"{dataset} needs --root (the images) and --train-list")
            fields = lists.stage_list_dataset(
                staging, dataset, Path(root), Path(train_list),
                Path(val_list) if val_list else None, Path(test_list) if test_list else None,
            )
            fields.setdefault("mean", list(sources_mean_std()[0]))
            fields.setdefault("std", list(sources_mean_std()[1]))
            used_imbalance, used_seed = fields.pop("imbalance"), None
        else:
            if dataset == "synthetic-lt":
                pool = n_max or SYNTHETIC_N_MAX
                src = sources.make_synthetic(num_classes=classes, per_class=pool, seed=seed)
                limit = pool
            elif source is not None:
                src = sources.load_npz(Path(source), dataset)
                limit = n_max or sources.CIFAR_N_MAX[dataset]
            else:
                src = sources.load_torchvision(dataset, Path(root or "data/torchvision"), download)
                limit = n_max or sources.CIFAR_N_MAX[dataset]
            fields = _stage_arrays(staging, dataset, src, imbalance, seed, limit)
            used_imbalance, used_seed = imbalance, seed
        fields.setdefault("shot_groups", longtail.shot_groups(fields["train_counts"]))
        manifest = longtail.finalize_manifest(
            {
                "dataset": dataset,
                "imbalance": used_imbalance,
                "seed": used_seed,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **fields,
            }
        )
        atomic_write_text(staging / longtail.MANIFEST, json_text(manifest, indent=1))
        result["manifest"] = manifest

    result: dict[str, Any] = {}
    downloads = dataset in sources.CIFAR_N_MAX and source is None
    inputs = {"--source": source, "--root": root or (Path("data/torchvision") if downloads else None),
              "--train-list": train_list, "--val-list": val_list, "--test-list": test_list,
              "--train": train, "--val": val, "--test": test}
    notes = _write_atomically(out, stage, force,
                              {k: Path(v) for k, v in inputs.items() if v is not None})
    return PrepareResult(out=out, manifest=result["manifest"], notes=notes)


def sources_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization for ImageNet-like list datasets: the usual ImageNet statistics."""
    from concutmix_cli.data.views import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD

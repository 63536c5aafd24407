"""`concutmix prepare`: build a long-tailed benchmark folder (images + manifest), atomically.

CIFAR and synthetic folders are self-contained (uint8 arrays in safetensors), so training never
needs the source again. List datasets (ImageNet-LT, Places-LT, iNat 2018) keep their split lists
and the image root.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from concutmix_cli.data import longtail, sources
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import sha256_file

ARRAY_DATASETS = ("cifar10-lt", "cifar100-lt", "synthetic-lt")
LIST_DATASETS = ("imagenet-lt", "places-lt", "inat2018")
DATASETS = ARRAY_DATASETS + LIST_DATASETS
SYNTHETIC_N_MAX = 200


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]


def default_out(dataset: str, imbalance: float) -> Path:
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
    path = folder / f"{name}.safetensors"
    save_file(
        {
            "images": torch.from_numpy(np.ascontiguousarray(images)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        },
        str(path),
    )
    return sha256_file(path)


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


def _write_atomically(out: Path, stage: callable, force: bool) -> None:
    """Build the folder under a temporary sibling name, then rename it into place."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        stage(staging)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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
) -> PrepareResult:
    """Build `out` for `dataset`; returns the manifest that was written."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    if imbalance < 1:
        raise UserError(f"--imbalance must be at least 1 (got {imbalance:g})")
    out = Path(out) if out is not None else default_out(dataset, imbalance)

    def stage(staging: Path) -> None:
        if dataset in LIST_DATASETS:
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
        fields["shot_groups"] = longtail.shot_groups(fields["train_counts"])
        manifest = longtail.finalize_manifest(
            {
                "dataset": dataset,
                "imbalance": used_imbalance,
                "seed": used_seed,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **fields,
            }
        )
        (staging / longtail.MANIFEST).write_text(json.dumps(manifest, indent=1))
        result["manifest"] = manifest

    result: dict[str, Any] = {}
    _write_atomically(out, stage, force)
    return PrepareResult(out=out, manifest=result["manifest"])


def sources_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization for ImageNet-like list datasets: the usual ImageNet statistics."""
    from concutmix_cli.data.views import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD

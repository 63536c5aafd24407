"""Reading a folder written by `concutmix prepare`, with its integrity checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from concutmix_cli.data import longtail
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import sha256_file


@dataclass
class Split:
    """One split: uint8 images [N, H, W, 3] in memory (arrays) or list entries (lists)."""

    labels: np.ndarray
    images: torch.Tensor | None = None
    entries: list[tuple[str, int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedData:
    folder: Path
    manifest: dict[str, Any]
    train: Split
    test: Split | None
    val: Split | None

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def train_counts(self) -> list[int]:
        return list(self.manifest["train_counts"])

    @property
    def is_arrays(self) -> bool:
        return self.manifest["kind"] == "arrays"

    @property
    def root(self) -> Path | None:
        return Path(self.manifest["root"]) if self.manifest.get("root") else None

    @property
    def mean(self) -> list[float]:
        return list(self.manifest["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.manifest["std"])

    def view_side(self, views_kind: str) -> int:
        """The side of the views of `views_kind` on this data: CIFAR-like views keep the stored
        arrays' side (32 for CIFAR, a user's --image-size up to 64), ImageNet-like views crop a
        user's --image-size of files, else the defaults (32, 224)."""
        from concutmix_cli.data.views import DEFAULT_SIDE

        size = self.manifest.get("image_size")
        wanted = "arrays" if views_kind == "cifar" else "lists"
        return int(size) if size and self.manifest["kind"] == wanted else DEFAULT_SIDE[views_kind]

    def preprocess(self, views_kind: str) -> dict[str, Any]:
        """How an image becomes a model input at evaluation, for `predict` and `export` (saved in
        the weights' metadata, so a weights file needs no data folder): `views.input_transform`."""
        return {"kind": self.manifest["kind"], "views": views_kind,
                "side": self.view_side(views_kind), "mean": self.mean, "std": self.std}

    def split(self, name: str) -> Split:
        found = {"train": self.train, "test": self.test, "val": self.val}.get(name)
        if found is None:
            raise UserError(f"{self.folder}: this dataset has no '{name}' split")
        return found


def _load_array_split(folder: Path, filename: str, expected_sha: str | None, verify: bool) -> Split:
    path = folder / filename
    if not path.is_file():
        raise UserError(f"{path}: missing; prepare the data again")
    if verify and expected_sha and sha256_file(path) != expected_sha:
        raise UserError(f"{path}: checksum mismatch (damaged or replaced); prepare the data again")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); prepare the data again") from None
    if set(tensors) != {"images", "labels"}:
        raise UserError(f"{path}: expected tensors 'images' and 'labels'")
    return Split(labels=tensors["labels"].numpy().astype(np.int64), images=tensors["images"])


def load_prepared(folder: Path | str, verify: bool = True, root: Path | None = None) -> PreparedData:
    """Load a prepared folder; `verify` checks the manifest checksum and the files' sha256."""
    folder = Path(folder)
    manifest = longtail.read_manifest(folder, verify=verify)
    if root is not None:
        manifest = {**manifest, "root": str(root)}
    splits: dict[str, Split | None] = {}
    for name, filename in manifest["splits"].items():
        if filename is None:
            splits[name] = None
        elif manifest["kind"] == "arrays":
            sha = manifest.get("files", {}).get(filename)
            splits[name] = _load_array_split(folder, filename, sha, verify)
        else:
            from concutmix_cli.data.lists import read_split_list

            entries = read_split_list(folder / filename)
            labels = np.array([label for _, label in entries], dtype=np.int64)
            splits[name] = Split(labels=labels, entries=entries)
    data = PreparedData(folder, manifest, splits["train"], splits.get("test"), splits.get("val"))
    if len(data.train) != sum(data.train_counts):
        raise UserError(f"{folder}: the training split does not match the manifest's counts")
    for name, split in (("test", data.test), ("val", data.val)):
        if split is not None and split.images is not None and data.train.images is not None \
                and split.images.shape[1:] != data.train.images.shape[1:]:
            raise UserError(
                f"{folder}: the {name} images are {list(split.images.shape[1:3])} but the "
                f"training images are {list(data.train.images.shape[1:3])}; prepare the data "
                "again from a source whose splits have one image size"
            )
    return data

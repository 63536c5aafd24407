"""Where images come from: CIFAR through torchvision's downloader or an .npz archive, and the
built-in synthetic long-tailed dataset. Every source returns the same `ArraySource`."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from concutmix_cli.errors import UserError

CIFAR_CLASSES = {"cifar10-lt": 10, "cifar100-lt": 100}
CIFAR_N_MAX = {"cifar10-lt": 5000, "cifar100-lt": 500}
NPZ_KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass
class ArraySource:
    """A balanced (or already long-tailed) source of uint8 HWC images with integer labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    info: dict = field(default_factory=dict)
    """What the manifest records about the source (type, path, sha256, ...)."""


def _check_arrays(src: ArraySource, origin: str, num_classes: int) -> ArraySource:
    for split, x, y in (("train", src.train_x, src.train_y), ("test", src.test_x, src.test_y)):
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise UserError(
                f"{origin}: {split} images must be uint8 [N, H, W, 3], got {x.dtype} {list(x.shape)}"
            )
        if 0 in x.shape[1:3]:
            raise UserError(f"{origin}: {split} images are {_size(x)}: they hold no pixels; "
                            "save the images themselves, [N, H, W, 3] with H, W >= 1")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"{origin}: {split} labels must be [N] matching {len(x)} images")
        if not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{origin}: {split} labels must be integers, got {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(
                f"{origin}: {split} labels out of range 0..{num_classes - 1} "
                f"(found {int(y.min())}..{int(y.max())})"
            )
    if src.train_x.shape[1:] != src.test_x.shape[1:]:
        raise UserError(
            f"{origin}: test images are {_size(src.test_x)} but training images are "
            f"{_size(src.train_x)}; both splits must have one image size"
        )
    src.train_y = src.train_y.astype(np.int64)
    src.test_y = src.test_y.astype(np.int64)
    return src


def _size(images: np.ndarray) -> str:
    return f"{images.shape[1]}x{images.shape[2]}"


def _check_declared_sizes(path: Path) -> None:
    """Every array of the archive must fit the bytes it holds. numpy allocates an array of the
    shape its header declares before reading the data, so a small file that declares a huge
    shape would ask for terabytes (and end as a MemoryError) instead of being called damaged."""
    if not zipfile.is_zipfile(path):
        return  # a bare .npy or no archive at all: np.load says which
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                reader = readers.get(np.lib.format.read_magic(member))
                if reader is None:
                    continue  # another format version: np.load reads or refuses it
                shape, _, dtype = reader(member)
                holds = info.file_size - member.tell()
            declared = math.prod(shape) * dtype.itemsize
            if declared > holds:
                raise UserError(
                    f"--source {path}: {info.filename} declares shape {list(shape)} "
                    f"({declared:,} bytes) but holds {max(holds, 0):,} bytes; the archive is "
                    "damaged: write it again with numpy.savez")


def load_npz(path: Path, dataset: str) -> ArraySource:
    """An offline archive with the keys of ../shared/data/README.md (train_x, train_y, ...)."""
    from concutmix_cli.fileio import sha256_file

    num_classes = CIFAR_CLASSES[dataset]
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--source {path}: file not found")
    try:
        _check_declared_sizes(path)
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise UserError(
                f"--source {path}: a single array (.npy), not an .npz archive; save the splits "
                f"with numpy.savez(FILE, {'=..., '.join(NPZ_KEYS)}=...)"
            )
        with archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise UserError(
                    f"--source {path}: missing keys {', '.join(missing)} "
                    f"(an archive needs {', '.join(NPZ_KEYS)}, optionally classes)"
                )
            arrays = {k: archive[k] for k in NPZ_KEYS}
            classes = [str(c) for c in archive["classes"]] if "classes" in archive.files else None
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"--source {path}: not a readable .npz archive ({err})") from None
    except MemoryError:
        raise UserError(f"--source {path}: its arrays do not fit in memory; use a smaller archive "
                        "or a machine with more memory") from None
    if classes is None or len(classes) != num_classes:
        classes = [str(c) for c in range(num_classes)]
    src = ArraySource(**arrays, classes=classes)
    src.info = {"type": "npz", "path": str(path.resolve()), "sha256": sha256_file(path)}
    return _check_arrays(src, f"--source {path}", num_classes)


def load_torchvision(dataset: str, root: Path, download: bool) -> ArraySource:
    """CIFAR-10/100 through torchvision's dataset classes (downloads into root when asked)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10-lt" else datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        raise UserError(
            f"{dataset}: no CIFAR data under --root {root} ({str(err).splitlines()[0]}); "
            f"download it with network access, or pass --source FILE.npz for an offline archive"
        ) from None
    except OSError as err:  # the download failed (offline, DNS, proxy)
        raise UserError(
            f"{dataset}: could not download CIFAR into --root {root} ({err}); "
            f"use --source FILE.npz for an offline archive, or --root a folder that already holds it"
        ) from None
    src = ArraySource(
        train_x=np.asarray(train.data, dtype=np.uint8),
        train_y=np.asarray(train.targets, dtype=np.int64),
        test_x=np.asarray(test.data, dtype=np.uint8),
        test_y=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes),
    )
    src.info = {"type": "torchvision", "root": str(Path(root).resolve()), "class": cls.__name__}
    return _check_arrays(src, f"--root {root}", CIFAR_CLASSES[dataset])


# ----------------------------------------------------------------------------- synthetic


def _class_pattern(c: int, num_classes: int, size: int) -> np.ndarray:
    """A class's template: a hue, a stripe orientation (flip-invariant), a frequency and a blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hue = c / num_classes
    rgb = np.array(
        [0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], dtype=np.float32
    )
    freq = 2 + (c // 2) % 4
    coord = xx if c % 2 == 0 else yy  # vertical or horizontal stripes survive horizontal flips
    stripes = np.sin(2 * math.pi * freq * coord)
    blob_y = 0.25 + 0.5 * ((c * 7) % num_classes) / max(num_classes - 1, 1)
    blob = np.exp(-(((yy - blob_y) ** 2) + (xx - 0.5) ** 2) / 0.02)
    pattern = 0.6 * stripes[..., None] * rgb[None, None, :] + 0.8 * blob[..., None] * (1 - rgb)
    return pattern.astype(np.float32)


def make_synthetic(
    num_classes: int = 10,
    per_class: int = 200,
    test_per_class: int = 50,
    seed: int = 0,
    size: int = 32,
) -> ArraySource:
    """A balanced synthetic pool: class template + random shift, contrast and noise, as uint8.

    The long-tailed subset is then taken from it exactly as from CIFAR. Learnable (the templates
    differ in colour, stripes and blob position) but not trivial (heavy noise, random shifts).
    """
    if num_classes < 2:
        raise UserError(f"--classes must be at least 2 (got {num_classes})")
    rng = np.random.default_rng(seed)
    templates = np.stack([_class_pattern(c, num_classes, size) for c in range(num_classes)])

    def draw(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), n_per_class)
        base = templates[labels]
        shifts = rng.integers(-3, 4, size=(len(labels), 2))
        for i, (dy, dx) in enumerate(shifts):  # small pool: a loop keeps this obvious
            base[i] = np.roll(base[i], (dy, dx), axis=(0, 1))
        contrast = rng.uniform(0.6, 1.2, size=(len(labels), 1, 1, 1)).astype(np.float32)
        noise = rng.normal(0.0, 0.25, size=base.shape).astype(np.float32)
        images = 0.5 + 0.35 * (contrast * base + noise)
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)

    train_x, train_y = draw(per_class)
    test_x, test_y = draw(test_per_class)
    src = ArraySource(train_x, train_y, test_x, test_y, [f"class{c}" for c in range(num_classes)])
    src.info = {"type": "synthetic", "seed": seed, "per_class": per_class, "size": size}
    return src

"""A user's own images as a prepared dataset: `concutmix prepare folder|csv` (docs/own-data.md).

folder: the ImageFolder layout, one sub-folder per class under --root (class names are the
folder names, sorted as torchvision sorts them); --val / --test name folders of the same layout.
csv: `path,label` files with a header row (--train, --val, --test), paths relative to --root,
labels class names or indices 0..C-1.

Every image is decoded once here (`images.decode_rgb`: regular files only, 16-bit data scaled
to 8 bits), so training never meets an unreadable file. Each file is one image: folders are
searched with links followed but each folder entered once, and a file reached twice (a link, a
hard link) counts once in its class and is refused in two classes or splits; so are split
folders that hold one another.

With --image-size up to 64 the images are stored as uint8 arrays like CIFAR (shorter side
resized, center crop: `views.array_resize`), which the CIFAR-like views and the device
augmentation path take; larger sizes keep the files and a split list, read with the
ImageNet-like views (`lists.ListImageDataset`). Held-out splits can be drawn per class
(--val-fraction, --test-fraction). Returns the manifest fields to the route (routes/own.py,
which checks the options first); prepare.py writes the folder atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from concutmix_cli.data import longtail
from concutmix_cli.data.images import (UnreadableImage, decode_rgb, file_identity, is_utf8,
                                       open_regular, reason_of, shown_path, walk_files)
from concutmix_cli.data.lists import entry_problem, write_split_list
from concutmix_cli.data.staging import channel_stats, first_gaps, inside, save_split, shorten
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import sha256_file

ARRAY_MAX_SIDE = 64
"""--image-size up to this: uint8 arrays in memory (CIFAR-like); above it: image files."""
DEFAULT_IMAGE_SIZE = 224
MAX_IMAGE_SIZE = 1024
SPLITS = ("train", "val", "test")
_SHOW = 3
"""How many file names one error message shows."""
_INDEX = re.compile(r"[0-9]+", re.ASCII)
_OPTION = {"train": "--root", "val": "--val", "test": "--test"}
"""The option of `prepare folder` that names each split's folder."""


@dataclass
class Item:
    """One image: its path relative to the dataset root, its class and split."""

    rel: str
    label: int
    split: str
    where: str
    """For messages: the folder or the CSV line that named it."""


def _shown(items: list[str]) -> str:
    return ", ".join(f"'{i}'" for i in items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")


# --------------------------------------------------------------------------------------------
# What the user gave: folders or CSV files -> classes and items


def _class_folders(folder: Path, option: str) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"{option} {shown_path(folder)}: not a folder; give the folder that holds "
                        "one sub-folder per class")
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    odd = [shown_path(n) for n in names if not is_utf8(n)]
    if odd:
        raise UserError(f"{option} {shown_path(folder)}: class folder name(s) {_shown(odd)} are "
                        "not valid UTF-8 (the bytes shown escaped), so they cannot be class names; "
                        "rename them")
    return names


def _check_separate(folders: dict[str, Path | None]) -> None:
    """--root, --val and --test must not be, or hold, one another: an image in two of them would
    be a test (or validation) image that the model also trains on."""
    given = [(s, Path(f)) for s, f in folders.items() if f is not None and Path(f).is_dir()]
    for k, (split, folder) in enumerate(given):
        for other, other_folder in given[:k]:
            if os.path.realpath(folder) == os.path.realpath(other_folder):
                how = "is the same folder as"
            elif inside(folder, other_folder):
                how = "is inside"
            elif inside(other_folder, folder):
                how = "holds"
            else:
                continue
            raise UserError(f"{_OPTION[split]} {shown_path(folder)} {how} {_OPTION[other]} "
                            f"{shown_path(other_folder)}: its images would be in two splits; "
                            "give separate folders")


def _same_file(first: Item, second: Item, classes: list[str]) -> UserError:
    def place(item: Item) -> str:
        return f"'{shown_path(item.rel)}' ({item.split}, class '{classes[item.label]}')"

    return UserError(f"{place(first)} and {place(second)} are the same file (a link or a hard "
                     "link), in two classes or splits; an image may belong to one class of one "
                     "split: remove one of them")


def scan_folders(root: Path, val: Path | None, test: Path | None) -> tuple[list[str], Path, list[Item]]:
    """Classes (the sorted sub-folder names of `root`), the common root of all images, items.

    Links are followed, but a file reached twice (a link loop, a link or a hard link to it) is
    one image: kept once when both are in the same class and split, refused when they are not."""
    root = Path(root)
    classes = _class_folders(root, "--root")
    if len(classes) < 2:
        raise UserError(f"--root {shown_path(root)}: found {len(classes)} class folder(s); the "
                        "ImageFolder layout needs one sub-folder per class, at least 2")
    folders = {"train": root, "val": val, "test": test}
    _check_separate(folders)
    used = {s: Path(os.path.abspath(f)) for s, f in folders.items() if f is not None}
    common = Path(os.path.commonpath([str(p) for p in used.values()]))
    index = {name: c for c, name in enumerate(classes)}
    items: list[Item] = []
    seen: dict[tuple[int, int], Item] = {}
    for split, folder in used.items():
        option = _OPTION[split]
        names = _class_folders(folder, option)
        unknown = [n for n in names if n not in index]
        if unknown:
            raise UserError(f"{option} {shown_path(folders[split])}: class folder(s) "
                            f"{_shown(unknown)} are not classes of --root {shown_path(root)}; "
                            f"every {split} class needs training images")
        for name in names:
            files = walk_files(folder / name)
            if split == "train" and not files:
                raise UserError(f"--root {shown_path(root)}: class folder '{name}' holds no "
                                "files; every class needs training images (remove the empty "
                                "folder)")
            for found in files:
                item = Item(os.path.relpath(found.path, common), index[name], split,
                            f"{option} {shown_path(folders[split])}")
                first = seen.get(found.identity) if found.identity is not None else None
                if first is not None:
                    if (first.label, first.split) == (item.label, item.split):
                        continue  # the same image reached twice in its own class: once
                    raise _same_file(first, item, classes)
                if found.identity is not None:
                    seen[found.identity] = item
                items.append(item)
    return classes, common, items


def _read_csv(path: Path, option: str) -> list[tuple[str, str, int]]:
    """(path, label, line) of each data row of a `path,label` CSV file with a header row."""
    try:
        raw = open_regular(path)  # a FIFO would block open() forever
    except FileNotFoundError:
        raise UserError(f"{option} {path}: file not found") from None
    except (OSError, UnreadableImage) as err:
        raise UserError(f"{option} {path}: cannot read ({reason_of(err)}); give a CSV file"
                        ) from None
    rows: list[tuple[str, str, int]] = []
    try:
        with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            names = [h.strip().lower() for h in header or []]
            if "path" not in names or "label" not in names:
                raise UserError(f"{option} {path} line 1: the header row must name the columns "
                                f"path and label (found: {', '.join(names) or 'nothing'})")
            col_path, col_label = names.index("path"), names.index("label")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                line = reader.line_num
                if len(row) <= max(col_path, col_label):
                    raise UserError(f"{option} {path} line {line}: {len(row)} column(s), the "
                                    f"header has {len(names)}")
                rel, label = row[col_path].strip(), row[col_label].strip()
                if not rel or not label:
                    raise UserError(f"{option} {path} line {line}: empty "
                                    f"{'path' if not rel else 'label'}")
                if "\0" in rel:
                    raise UserError(f"{option} {path} line {line}: the path holds a NUL "
                                    "character, which no file name can; fix the row")
                rows.append((rel, label, line))
    except UnicodeDecodeError:
        raise UserError(f"{option} {path}: not UTF-8 text; save the CSV as UTF-8") from None
    except csv.Error as err:
        raise UserError(f"{option} {path}: not a readable CSV file ({err})") from None
    if not rows:
        raise UserError(f"{option} {path}: no data rows after the header")
    return rows


def _relative(rel: str, root: Path, where: str) -> str:
    """A CSV path relative to the root: relative ones as they are, absolute ones inside it."""
    if os.path.isabs(rel):
        inside = os.path.relpath(rel, root)
        if inside == os.pardir or inside.startswith(os.pardir + os.sep):
            raise UserError(f"{where}: '{rel}' is not inside --root {root}; paths must be "
                            "relative to --root or inside it")
        return inside
    norm = os.path.normpath(rel)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise UserError(f"{where}: '{rel}' points outside --root {root} (no '..' above it)")
    return norm


def _index_value(label: str, limit: int) -> int | None:
    """The class index an index label names (leading zeros allowed: "007" is 7), or None when it
    is `limit` or more (compared by length first: a label of 5000 digits is no number to parse)."""
    digits = label.lstrip("0") or "0"
    if len(digits) > len(str(limit)):
        return None
    value = int(digits)
    return value if value < limit else None


def read_csvs(root: Path, csvs: dict[str, Path | None]) -> tuple[list[str], list[Item]]:
    """Classes and items of the CSV files. Labels are indices when every label of every file is
    a non-negative integer (classes 0..C-1, C = the largest training label + 1, matched by value:
    "01" is class 1), else class names (the sorted names of the training file).

    Every class 0..C-1 needs a training row, so an index can be no larger than the training rows:
    a larger one is refused before anything is sized by it. A file listed twice under two names
    (a link to it) is refused like a path listed twice."""
    if not Path(root).is_dir():
        raise UserError(f"--root {shown_path(root)}: not a folder; give the folder the CSV paths "
                        "are relative to")
    root = Path(root).resolve()
    rows = {s: _read_csv(p, f"--{s}") for s, p in csvs.items() if p is not None}
    as_index = all(_INDEX.fullmatch(label) for split_rows in rows.values()
                   for _, label, _ in split_rows)
    train_labels = [label for _, label, _ in rows["train"]]
    if as_index:
        limit = len(train_labels)
        values = [_index_value(label, limit) for label in train_labels]
        present = np.unique(np.array([v for v in values if v is not None], dtype=np.int64))
        too_large = [k for k, v in enumerate(values) if v is None]
        count = limit if too_large else int(present[-1]) + 1
        absent = first_gaps(present, count, 5)
        if too_large:
            _, label, line = rows["train"][too_large[0]]
            raise UserError(
                f"--train {csvs['train']} line {line}: {shorten(label, 40)} cannot be a class index: "
                f"every class 0..C-1 needs a training row and the file has {limit}, so C is at "
                f"most {limit} (class(es) {', '.join(map(str, absent))} have no training row); "
                "number the classes 0..C-1, or use class names")
        if absent:
            raise UserError(f"--train {csvs['train']}: labels are indices 0..{count - 1} but "
                            f"class(es) {', '.join(map(str, absent))} have no training row; "
                            "number the classes 0..C-1, or use class names")
        classes = [str(c) for c in range(count)]
    else:
        classes = sorted(set(train_labels))
    index = {name: c for c, name in enumerate(classes)}
    items: list[Item] = []
    first_seen: dict[str, str] = {}
    same_file: dict[tuple[int, int], tuple[str, str]] = {}
    for split, split_rows in rows.items():
        for rel, label, line in split_rows:
            where = f"--{split} {csvs[split]} line {line}"
            c = _index_value(label, len(classes)) if as_index else index.get(label)
            if c is None:
                raise UserError(f"{where}: class '{shorten(label, 40)}' has no training row; every "
                                f"{split} class must be a class of --train")
            norm = _relative(rel, root, where)
            if norm in first_seen:
                raise UserError(f"{where}: '{rel}' is already listed ({first_seen[norm]}); each "
                                "image may be listed once, in one split")
            first_seen[norm] = where
            identity = file_identity(root / norm)
            if identity is not None:
                if identity in same_file:
                    other, other_where = same_file[identity]
                    raise UserError(f"{where}: '{rel}' is the same file as '{other}' "
                                    f"({other_where}), through a link; each image may be listed "
                                    "once, in one split")
                same_file[identity] = (rel, where)
            items.append(Item(norm, c, split, where))
    return classes, items


# --------------------------------------------------------------------------------------------
# Decoding (once), held-out splits


def decode_all(root: Path, items: list[Item], side: int | None, skip_bad: bool,
               callbacks=None) -> tuple[list[Item], list[np.ndarray] | None, list[dict[str, str]]]:
    """Decode every image once. Returns the readable items, their side x side uint8 arrays (when
    `side` is given: stored as arrays), and the skipped files; without `skip_bad` any unreadable
    file is an error naming them all (count and the first few). A path that is not valid UTF-8
    counts as unreadable: neither the manifest nor a split list could name it."""
    from concutmix_cli.data.views import array_resize
    from torchvision import transforms as T

    resize = T.Compose(array_resize(side)) if side else None
    good: list[Item] = []
    arrays: list[np.ndarray] = []
    bad: list[dict[str, str]] = []
    sequence = items
    if callbacks is not None:  # WorkProgress events; the caller draws them
        from concutmix_cli.events import counted, emitter

        sequence = counted(items, len(items), "decoding images", emitter(callbacks))
    for item in sequence:
        path = os.path.join(root, item.rel)
        reason = None
        if not is_utf8(item.rel):
            reason = "file name is not valid UTF-8"
        else:
            try:
                image = decode_rgb(path)
                if resize is not None:
                    arrays.append(np.asarray(resize(image), dtype=np.uint8))
            except (UnreadableImage, OSError) as err:
                reason = reason_of(err)
        if reason is not None:
            bad.append({"path": shown_path(item.rel), "split": item.split, "reason": reason})
            continue
        good.append(item)
    if bad and not skip_bad:
        raise UserError(f"{len(bad)} of {len(items)} files are not readable images "
                        f"({_shown([b['path'] for b in bad])}; first: {bad[0]['reason']}); remove "
                        "them, or pass --skip-bad to leave them out (they are listed in the "
                        "manifest)")
    return good, (arrays if side else None), bad


def held_out_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) images of a class of n: round(f * n) (halves up), at least 1 where f > 0, then
    fewer (val first) until one image is left for training."""
    def share(f: float) -> int:
        return max(1, math.floor(f * n + 0.5)) if f > 0 else 0

    val, test = share(val_fraction), share(test_fraction)
    while n - val - test < 1:
        if val > 0:
            val -= 1
        else:
            test -= 1
    return val, test


def split_held_out(items: list[Item], classes: list[str], val_fraction: float,
                   test_fraction: float, seed: int) -> tuple[list[Item], list[str]]:
    """Move `held_out_counts` training images of each class, drawn with `seed`, to val / test;
    notes say which classes were too small for their share."""
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    for c, name in enumerate(classes):
        own = [i for i, item in enumerate(items) if item.split == "train" and item.label == c]
        val, test = held_out_counts(len(own), val_fraction, test_fraction)
        lacks = [s for s, k, f in (("val", val, val_fraction), ("test", test, test_fraction))
                 if f and not k]
        if lacks:
            notes.append(f"class '{name}' has only {len(own)} image(s): {len(own) - val - test} "
                         f"kept for training, none for {' or '.join(lacks)}")
        order = rng.permutation(len(own))
        for k, position in enumerate(order[: val + test]):
            items[own[position]].split = "test" if k < test else "val"
    return items, notes


# --------------------------------------------------------------------------------------------
# Staging


def _check_list_names(items: list[Item]) -> None:
    """Images kept as files are named in a split list (`relative/path label` lines): a path the
    list cannot hold (a line break, a space at either end) is refused before decoding anything,
    rather than written as a list that training would read back wrong. Names that are not UTF-8
    are left to decode_all, which counts them as unreadable."""
    for item in items:
        problem = entry_problem(item.rel, item.label) if is_utf8(item.rel) else None
        if problem:
            raise UserError(f"{item.where}: {item.rel!r} {problem}; rename it, or pass "
                            f"--image-size {ARRAY_MAX_SIDE} or less (images stored as arrays, "
                            "no list)")


def stage_own(staging: Path, dataset: str, *, root: Path, csvs: dict[str, Path | None] | None = None,
              val: Path | None = None, test: Path | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
              val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
              skip_bad: bool = False, callbacks=None) -> dict[str, Any]:
    """Read, decode, split and write a user's dataset into `staging`; the manifest fields
    (`seed`: the held-out splits' seed, None when none was drawn)."""
    if dataset == "folder":
        classes, common, items = scan_folders(Path(root), val, test)
        source = {"type": "folder", "root": str(Path(root).resolve()),
                  "val": str(Path(val).resolve()) if val else None,
                  "test": str(Path(test).resolve()) if test else None}
    else:
        classes, items = read_csvs(Path(root), csvs or {})
        common = Path(root).resolve()
        source = {"type": "csv", "root": str(common), "files": {
            s: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
            for s, p in (csvs or {}).items() if p is not None}}
    as_arrays = image_size <= ARRAY_MAX_SIDE
    if not as_arrays:
        _check_list_names(items)
    items, arrays, skipped = decode_all(common, items, image_size if as_arrays else None,
                                        skip_bad, callbacks)
    counts = np.bincount([i.label for i in items if i.split == "train"], minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"class(es) {_shown(empty)} have no readable training image left; add "
                        "images or remove the class")
    notes: list[str] = []
    if val_fraction or test_fraction:
        items, notes = split_held_out(items, classes, val_fraction, test_fraction, seed)

    by_split = {s: [k for k, item in enumerate(items) if item.split == s] for s in SPLITS}
    fields: dict[str, Any] = {"num_classes": len(classes), "classes": classes,
                              "image_size": image_size}
    splits: dict[str, str | None] = {}
    split_counts: dict[str, list[int] | None] = {}
    files: dict[str, str] = {}
    for split, keys in by_split.items():
        if not keys:
            splits[split] = split_counts[split] = None
            continue
        labels = np.array([items[k].label for k in keys], dtype=np.int64)
        split_counts[split] = longtail.class_counts(labels, len(classes))
        if as_arrays:
            name = f"{split}.safetensors"
            files[name] = save_split(staging, split, np.stack([arrays[k] for k in keys]), labels)
        else:
            name = f"{split}.txt"
            write_split_list(staging / name, [(items[k].rel, items[k].label) for k in keys])
        splits[split] = name
    if as_arrays:
        mean, std = channel_stats(np.stack([arrays[k] for k in by_split["train"]]))
        fields.update(kind="arrays", mean=mean, std=std, files=files)
    else:  # files read with the ImageNet-like views: the usual ImageNet statistics
        from concutmix_cli.data.views import IMAGENET_MEAN, IMAGENET_STD

        fields.update(kind="lists", root=str(common), mean=list(IMAGENET_MEAN),
                      std=list(IMAGENET_STD))
    train_counts = split_counts["train"]
    thresholds = longtail.choose_shot_thresholds(train_counts)
    fields.update(
        train_counts=train_counts, val_counts=split_counts["val"],
        test_counts=split_counts["test"], train_indices=list(range(len(by_split["train"]))),
        splits=splits, imbalance=max(train_counts) / min(train_counts),
        shot_thresholds=thresholds,
        shot_groups=longtail.shot_groups(train_counts, thresholds["many_min"], thresholds["few_max"]),
        seed=seed if (val_fraction or test_fraction) else None,
        val_fraction=val_fraction or None, test_fraction=test_fraction or None,
        skipped=skipped, notes=notes,
        source=source,
    )
    return fields

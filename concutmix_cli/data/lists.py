"""Split-list data sources: ImageNet-LT, Places-LT and iNaturalist 2018 (docs/method-notes.md section 1).

These benchmarks come as fixed split files, one ``relative/path label`` line per image, next to
an image tree the user supplies. ``concutmix prepare imagenet-lt|places-lt|inat2018`` reads the
lists, checks them (syntax, class bookkeeping, that every listed image exists under the root),
copies them, normalized, into the prepared folder and returns the manifest fields.
``ListImageDataset`` reads the images back at training time.

Nothing here downloads anything, and the images are never copied: the manifest keeps the
absolute image root, which ``ListImageDataset.from_prepared`` can override (``root_override``)
when the prepared folder moves to another machine.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch.utils.data

from concutmix_cli.data.images import (UnreadableImage, decode_rgb, open_regular, reason_of,
                                       shown_path)
from concutmix_cli.data.staging import first_gaps, shorten
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import sha256_file

SPLITS = ("train", "val", "test")

_LABEL_RE = re.compile(r"[0-9]+", re.ASCII)
_SHOW_MISSING = 3
"""How many missing image paths one error message names."""
_SHOW_CLASSES = 5
"""How many offending class ids one error message names."""


# --------------------------------------------------------------------------------------------
# Reading split lists


_BOM = b"\xef\xbb\xbf"
_MAX_LABEL_DIGITS = 18
"""A label of more digits is no class index (and would not fit the int64 label arrays)."""


def _line_text(raw: bytes, lineno: int) -> str:
    """One line of a split list as the reader sees it: byte-order mark (line 1) dropped, UTF-8
    decoded (UnicodeDecodeError otherwise), surrounding whitespace stripped."""
    if lineno == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    return raw.decode("utf-8").strip()


def _split_entry(text: str) -> tuple[str, str] | None:
    """(path, label text) of a stripped line: the label is the last whitespace-separated field,
    so paths may hold spaces; None when there is no second field."""
    parts = text.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _entry_line(rel: str, label: int) -> str:
    return f"{rel} {label}\n"


def entry_problem(rel: str, label: int, lineno: int = 2) -> str | None:
    """Why ``rel label`` cannot be written as a split-list line that the reader (`_line_text`,
    `_split_entry`) reads back as the same path and label; None when it can."""
    line = _entry_line(rel, label)
    try:
        raw = line.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8, which a split list cannot hold"
    if line.count("\n") != 1:
        return "holds a line break, which a split list cannot hold"
    if _split_entry(_line_text(raw, lineno)) != (rel, str(label)):
        return ("starts or ends with a space (or another character that a split list reads as "
                "one), which a split list cannot hold")
    return None


def _parse_split_list(path: Path, what: str) -> tuple[list[tuple[str, int]], list[int]]:
    """Entries of a split list and the 1-based file line number of each entry."""
    entries: list[tuple[str, int]] = []
    line_numbers: list[int] = []
    first_seen: dict[str, int] = {}
    duplicates: list[tuple[int, int, str]] = []  # (line, first line, path)
    lineno = 0
    fix = "each line must be 'relative/path label' with an integer label >= 0"
    try:
        with open_regular(path) as f:  # a FIFO would block open() forever
            for lineno, raw in enumerate(f, 1):
                text = _line_text(raw, lineno)
                if not text:
                    continue
                parts = _split_entry(text)
                if parts is None:
                    raise UserError(
                        f"{what} {path} line {lineno}: no label after '{shorten(text)}'; {fix}"
                    )
                rel, label_text = parts
                if _LABEL_RE.fullmatch(label_text) is None:
                    if label_text.startswith("-") and _LABEL_RE.fullmatch(label_text[1:]):
                        problem = f"negative label {shorten(label_text)}"
                    else:
                        problem = f"label '{shorten(label_text)}' is not an integer"
                    raise UserError(f"{what} {path} line {lineno}: {problem}; {fix}")
                if len(label_text.lstrip("0")) > _MAX_LABEL_DIGITS:
                    raise UserError(
                        f"{what} {path} line {lineno}: label {shorten(label_text)} is too large to "
                        "be a class index; labels number the classes 0..C-1"
                    )
                if os.path.isabs(rel):
                    raise UserError(
                        f"{what} {path} line {lineno}: absolute path '{shorten(rel)}'; list paths "
                        "must be relative to the image root (--root)"
                    )
                norm = os.path.normpath(rel)
                if norm == os.pardir or norm.startswith(os.pardir + os.sep) or norm == os.curdir:
                    raise UserError(
                        f"{what} {path} line {lineno}: '{shorten(rel)}' points outside the image "
                        "root; list paths must name files inside --root (no '..' above it)"
                    )
                if norm in first_seen:
                    duplicates.append((lineno, first_seen[norm], rel))
                first_seen.setdefault(norm, lineno)
                entries.append((rel, int(label_text)))
                line_numbers.append(lineno)
    except UnicodeDecodeError:
        raise UserError(
            f"{what} {path} line {lineno}: not UTF-8 text; save the list as UTF-8"
        ) from None
    except (OSError, UnreadableImage) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UserError(f"{what} {path}: cannot read ({reason}); check the path") from None
    if duplicates:
        line, first, rel = duplicates[0]
        raise UserError(
            f"{what} {path} line {line}: '{shorten(rel)}' is already listed on line {first} "
            f"({len(duplicates)} duplicate line(s) in all); each image may be listed once: "
            "remove the duplicates"
        )
    return entries, line_numbers


def read_split_list(path: Path) -> list[tuple[str, int]]:
    """Read a ``relative/path label`` list: one image per line, blank lines ignored.

    The label is the last whitespace-separated field, so a path containing spaces still works.
    Raises UserError naming the file and line number for a missing file, a line without a label,
    or a label that is not a non-negative integer.
    """
    entries, _ = _parse_split_list(Path(path), "split list")
    return entries


# --------------------------------------------------------------------------------------------
# Staging (concutmix prepare)


class _List:
    """One parsed split list and where it came from."""

    def __init__(self, split: str, path: Path, dataset: str):
        self.split = split
        self.path = Path(path)
        self.what = f"{dataset} {split} list"
        self.entries, self.line_numbers = _parse_split_list(self.path, self.what)
        if not self.entries:
            raise UserError(
                f"{self.what} {self.path}: no entries; expected one 'relative/path label' line "
                "per image"
            )
        self.labels = np.fromiter((lab for _, lab in self.entries), dtype=np.int64,
                                  count=len(self.entries))


def _check_classes(train: _List, others: list[_List]) -> int:
    """Number of classes C = max train label + 1; all of 0..C-1 trained, other lists inside.

    Every class needs a training line, so no label can reach the number of training lines: a
    larger one is refused (naming its line) before anything is sized by it."""
    present = np.unique(train.labels)
    lines = len(train.entries)
    largest = int(np.argmax(train.labels))
    if train.labels[largest] >= lines:
        label = int(train.labels[largest])
        missing = label + 1 - len(present)
        shown = ", ".join(str(c) for c in first_gaps(present, label + 1, _SHOW_CLASSES))
        raise UserError(
            f"{train.what} {train.path} line {train.line_numbers[largest]}: class {label} cannot "
            f"be a class index: with it, {missing} of the {label + 1} classes 0..{label} would "
            f"have no training image (class {shown}{', ...' if missing > _SHOW_CLASSES else ''}); "
            f"every class 0..C-1 needs a training line and the list has {lines}, so C is at most "
            f"{lines}; labels must be numbered 0..C-1 with every class present in the training list"
        )
    num_classes = int(train.labels.max()) + 1
    if len(present) < num_classes:
        missing = num_classes - len(present)
        shown = ", ".join(str(c) for c in first_gaps(present, num_classes, _SHOW_CLASSES))
        more = ", ..." if missing > _SHOW_CLASSES else ""
        raise UserError(
            f"{train.what} {train.path}: {missing} of the {num_classes} classes 0..{num_classes - 1} "
            f"have no training image (class {shown}{more}); labels must be numbered 0..C-1 with "
            "every class present in the training list"
        )
    for other in others:
        bad = np.flatnonzero(other.labels >= num_classes)
        if len(bad):
            first = int(bad[0])
            raise UserError(
                f"{other.what} {other.path} line {other.line_numbers[first]}: class "
                f"{int(other.labels[first])} is outside 0..{num_classes - 1} (the training list has "
                f"{num_classes} classes; {len(bad)} line(s) affected); use lists of the same benchmark"
            )
    return num_classes


def _missing_files(root: Path, entries: list[tuple[str, int]], cache: dict[str, set[str] | None]) -> list[str]:
    """Listed paths that are not files under root, in list order.

    One ``os.scandir`` per directory (cached across lists) instead of one ``stat`` per image;
    a name not found that way is confirmed with ``os.path.isfile`` (case-insensitive file
    systems, odd path spellings).
    """
    root_text = os.fspath(root)
    missing: list[str] = []
    for rel, _ in entries:
        directory, name = os.path.split(rel)
        names = cache.get(directory, False)
        if names is False:
            try:
                with os.scandir(os.path.join(root_text, directory)) as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                names = None
            cache[directory] = names
        if names is not None and name in names:
            continue
        if not os.path.isfile(os.path.join(root_text, rel)):
            missing.append(rel)
    return missing


def _check_files(root: Path, lists: list[_List]) -> None:
    if not root.is_dir():
        raise UserError(f"image root {root}: not a directory; pass --root the folder the list paths are relative to")
    cache: dict[str, set[str] | None] = {}
    found: list[tuple[_List, list[str]]] = []
    for split_list in lists:
        missing = _missing_files(root, split_list.entries, cache)
        if missing:
            found.append((split_list, missing))
    if not found:
        return
    total = sum(len(m) for _, m in found)
    per_list = "; ".join(
        f"{lst.split} list {lst.path}: {len(m)} of {len(lst.entries)}" for lst, m in found
    )
    first = [p for _, m in found for p in m][:_SHOW_MISSING]
    shown = ", ".join(f"'{p}'" for p in first)
    more = ", ..." if total > len(first) else ""
    raise UserError(
        f"{total} listed image(s) missing under --root {root} ({per_list}), first: {shown}{more}; "
        "check --root (the folder the list paths are relative to) or the lists"
    )


def write_split_list(path: Path, entries: list[tuple[str, int]]) -> None:
    """Write a split list, each entry checked first to read back (same reader) as written: a
    path the format cannot hold is refused, naming it, instead of becoming a list that training
    reads wrong. Nothing is left behind on an error."""
    lines = []
    for lineno, (rel, label) in enumerate(entries, 1):
        problem = entry_problem(rel, label, lineno)
        if problem:
            raise UserError(f"{shown_path(rel)!r} {problem} (line {lineno} of {path.name}); "
                            "rename the file")
        lines.append(_entry_line(rel, label))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage_list_dataset(
    staging_dir: Path,
    dataset: str,
    root: Path,
    train_list: Path,
    val_list: Path | None,
    test_list: Path | None,
    check_files: bool = True,
) -> dict:
    """Check the split lists of a list benchmark and copy them into ``staging_dir``.

    Checks: list syntax; C = max train label + 1 with every class 0..C-1 present in train and
    val/test labels inside 0..C-1; every listed file exists under ``root`` (``check_files``).
    Writes train.txt / val.txt / test.txt (``path label`` lines) and returns the manifest fields.
    """
    root = Path(root)
    staging_dir = Path(staging_dir)
    train = _List("train", train_list, dataset)
    others = [_List(split, path, dataset) for split, path in (("val", val_list), ("test", test_list))
              if path is not None]
    lists = [train, *others]
    num_classes = _check_classes(train, others)
    if check_files:
        _check_files(root, lists)

    staging_dir.mkdir(parents=True, exist_ok=True)
    by_split = {lst.split: lst for lst in lists}
    splits: dict[str, str | None] = {}
    counts: dict[str, list[int] | None] = {}
    sources: dict[str, dict | None] = {}
    for split in SPLITS:
        lst = by_split.get(split)
        if lst is None:
            splits[split] = counts[split] = sources[split] = None
            continue
        write_split_list(staging_dir / f"{split}.txt", lst.entries)
        splits[split] = f"{split}.txt"
        counts[split] = np.bincount(lst.labels, minlength=num_classes).tolist()
        sources[split] = {
            "path": str(lst.path.resolve()),
            "sha256": sha256_file(lst.path),
            "lines": len(lst.entries),
        }

    train_counts = counts["train"]
    root_text = str(root.resolve())
    return {
        "kind": "lists",
        "root": root_text,
        "num_classes": num_classes,
        "classes": [str(c) for c in range(num_classes)],
        "train_counts": train_counts,
        "val_counts": counts["val"],
        "test_counts": counts["test"],
        "train_indices": list(range(len(train.entries))),
        "imbalance": float(max(train_counts)) / float(min(train_counts)),
        "image_size": None,
        "splits": splits,
        "source": {"type": "lists", "root": root_text, "lists": sources},
    }


# --------------------------------------------------------------------------------------------
# Reading images at training / evaluation time


class ListImageDataset(torch.utils.data.Dataset):
    """Images named by a split list, relative to ``root``: items are (transform(RGB image), label)."""

    def __init__(self, root: Path, entries: list[tuple[str, int]], transform: Callable | None = None):
        self.root = Path(root)
        self.entries = list(entries)
        self.transform = transform
        self.labels = np.fromiter((lab for _, lab in self.entries), dtype=np.int64,
                                  count=len(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        rel, label = self.entries[index]
        path = os.path.join(self.root, rel)
        try:
            image = decode_rgb(path)
        except FileNotFoundError:
            raise UserError(
                f"image {shown_path(path)} (entry {index} of the list): file not found; check "
                "the image root (prepare --root, or the root override) and that the images are "
                "complete"
            ) from None
        except (OSError, UnreadableImage) as err:
            raise UserError(
                f"image {shown_path(path)} (entry {index} of the list): cannot be decoded "
                f"({reason_of(err)}); replace the file or remove its line from the list and "
                "prepare again"
            ) from None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)

    @classmethod
    def from_prepared(
        cls,
        prepared_dir: Path,
        split: str,
        root_override: Path | None = None,
        transform: Callable | None = None,
    ) -> "ListImageDataset":
        """The dataset of one split of a folder written by ``stage_list_dataset``."""
        prepared_dir = Path(prepared_dir)
        manifest_path = prepared_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UserError(
                f"prepared data {prepared_dir}: cannot read manifest.json ({err.strerror}); "
                "run `concutmix prepare` first or fix data.path"
            ) from None
        except json.JSONDecodeError as err:
            raise UserError(
                f"prepared data {manifest_path}: not valid JSON ({err}); run `concutmix prepare` again"
            ) from None
        if split not in SPLITS:
            raise UserError(f"split '{split}': unknown; use one of {', '.join(SPLITS)}")
        splits = manifest.get("splits") or {}
        list_name = splits.get(split, f"{split}.txt" if not splits else None)
        if list_name is None:
            raise UserError(
                f"prepared data {prepared_dir}: has no {split} split (no --{split}-list was given "
                "to prepare); prepare again with it or use another split"
            )
        if root_override is not None:
            root = Path(root_override)
        elif "root" in manifest:
            root = Path(manifest["root"])
        else:
            raise UserError(f"prepared data {manifest_path}: no 'root' key; run `concutmix prepare` again")
        if not root.is_dir():
            how = "the given root override" if root_override is not None else "the root recorded by prepare"
            raise UserError(
                f"image root {root} ({how}) is not a directory; pass the folder the list paths are "
                "relative to"
            )
        entries, _ = _parse_split_list(prepared_dir / list_name, f"prepared {split} list")
        indices = manifest.get("train_indices") if split == "train" else None
        if indices is not None and indices != list(range(len(entries))):
            if any(not isinstance(i, int) or not 0 <= i < len(entries) for i in indices):
                raise UserError(
                    f"prepared data {manifest_path}: train_indices do not match {list_name} "
                    f"({len(entries)} lines); run `concutmix prepare` again"
                )
            entries = [entries[i] for i in indices]
        return cls(root, entries, transform=transform)

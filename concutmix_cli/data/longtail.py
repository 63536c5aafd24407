"""Long-tailed benchmarks (docs/method-notes.md section 1): the exponential profile, the LDAM-DRW subset
selection, shot groups, and the prepared folder's manifest.

The selection reproduces LDAM-DRW / BCL byte for byte: numpy's legacy global RNG is seeded once,
then for each class in natural order its indices are shuffled and the first n_c kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from concutmix_cli import __version__
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import sha256_bytes

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "concutmix-prepared/1"
MANY_SHOT_MIN = 101  # many: more than 100 training images
FEW_SHOT_MAX = 19  # few: fewer than 20


def exponential_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """n_c = int(n_max * (1/IF) ** (c / (C - 1))) for c = 0..C-1 (class 0 is the largest)."""
    if imbalance < 1:
        raise UserError(f"imbalance factor must be at least 1 (got {imbalance})")
    if num_classes == 1:
        return [n_max]
    return [int(n_max * (1.0 / imbalance) ** (c / (num_classes - 1))) for c in range(num_classes)]


def select_longtail_indices(labels: np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """The LDAM-DRW selection: seed numpy's legacy global RNG once, shuffle each class, keep n_c.

    Returns positions in `labels` (the source's training split), class by class.
    The global RNG state is restored afterwards so that callers are not affected.
    """
    labels = np.asarray(labels)
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        chosen = []
        for c, n_c in enumerate(counts):
            idx = np.where(labels == c)[0]
            if len(idx) < n_c:
                raise UserError(
                    f"class {c} has only {len(idx)} training images but the profile needs {n_c}"
                )
            np.random.shuffle(idx)
            chosen.append(idx[:n_c])
    finally:
        np.random.set_state(saved)
    return np.concatenate(chosen).astype(np.int64)


def shot_groups(train_counts: Sequence[int], many_min: int = MANY_SHOT_MIN,
                few_max: int = FEW_SHOT_MAX) -> dict[str, list[int]]:
    """Many (>= many_min), few (<= few_max), medium (between) training images per class; the
    defaults are the published protocol's > 100 and < 20."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(train_counts):
        key = "many" if n >= many_min else "few" if n <= few_max else "medium"
        groups[key].append(c)
    return groups


def choose_shot_thresholds(train_counts: Sequence[int]) -> dict[str, Any]:
    """Shot-group thresholds for a user's own data, recorded in its manifest.

    The published thresholds (many > 100, few < 20) when they leave at least one class in both
    the many and the few group, so numbers stay comparable with the literature. Otherwise (small
    data: a 40-image head class would make every class medium or few) the classes sorted by
    training count are cut in thirds: many = at least the count of the smallest class of the
    top third, few = at most the count of the largest class of the bottom third (classes tied
    with a cut class join its group); where the cuts meet, many wins, so a balanced set is all
    many.
    """
    counts = sorted((int(n) for n in train_counts), reverse=True)
    standard = shot_groups(counts)
    if standard["many"] and standard["few"]:
        return {"rule": "standard", "many_min": MANY_SHOT_MIN, "few_max": FEW_SHOT_MAX}
    third = -(-len(counts) // 3)
    many_min = counts[third - 1]
    few_max = min(counts[-third], many_min - 1)
    return {"rule": "thirds", "many_min": many_min, "few_max": few_max}


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


# ----------------------------------------------------------------------------- manifest


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def finalize_manifest(fields: dict[str, Any]) -> dict[str, Any]:
    """Add format, version and a checksum of the whole body (detects hand edits)."""
    body = {"format": MANIFEST_FORMAT, "toolkit_version": __version__, **fields}
    body.pop("checksum", None)
    body["checksum"] = sha256_bytes(_canonical(body))
    return body


def prepared_files(folder: Path) -> set[str] | None:
    """The names `prepare` wrote in `folder` (manifest.json and the files it lists), or None if
    its manifest.json does not say it is a concutmix prepared dataset (of any version)."""
    try:
        body = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    fmt = body.get("format") if isinstance(body, dict) else None
    if not (isinstance(fmt, str) and fmt.startswith(MANIFEST_FORMAT.split("/")[0] + "/")):
        return None
    names = {MANIFEST}
    for listing in (body.get("splits"), body.get("files")):
        if isinstance(listing, dict):
            names |= {str(v) for v in listing.values() if isinstance(v, str)}
            names |= {str(k) for k in listing if listing is body.get("files")}
    return {n for n in names if "/" not in n and n not in ("", ".", "..")}


def read_manifest(folder: Path, verify: bool = True) -> dict[str, Any]:
    """Read and check OUT/manifest.json of a prepared folder."""
    path = Path(folder) / MANIFEST
    if Path(folder).exists() and not Path(folder).is_dir():
        raise UserError(f"{folder} is a file, not a prepared data folder (a folder written by "
                        f"`concutmix prepare`)")
    if not Path(folder).is_dir():
        raise UserError(f"prepared data folder not found: {folder} (run `concutmix prepare` first)")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: not a folder written by `concutmix prepare`")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise UserError(f"{path}: unreadable manifest ({err}); prepare the data again") from None
    found = body.get("format") if isinstance(body, dict) else None
    if found != MANIFEST_FORMAT:
        if isinstance(found, str) and found.startswith(MANIFEST_FORMAT.split("/")[0] + "/"):
            raise UserError(
                f"{path}: written by another concutmix version (format {found!r}, toolkit "
                f"{body.get('toolkit_version')}; this is {__version__}, format "
                f"{MANIFEST_FORMAT!r}); prepare the data again with this version"
            )
        raise UserError(f"{path}: not a concutmix manifest (format {found!r}); point --data at a "
                        f"folder written by `concutmix prepare`")
    if verify:
        stored = body.get("checksum")
        rest = {k: v for k, v in body.items() if k != "checksum"}
        if stored != sha256_bytes(_canonical(rest)):
            raise UserError(
                f"{path}: checksum mismatch, the manifest was edited or damaged; prepare the data again"
            )
    return body

"""What `train` tells the user about the run it continues, and where a run's data is.

Why: a run stores the data folder it trained on; that path must find the data again from any
working directory (so it is stored absolute), and when the data is gone or is other data, the
message must say so instead of "run `concutmix prepare` first". A resume that changes settings
or has nothing left to train says so too, instead of silently doing something else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from concutmix_cli.config import Config
from concutmix_cli.errors import UserError


def absolute_data_path(cfg: Config) -> None:
    """Store data.path absolute (as the user named it, symlinks kept), so that eval,
    inspect-labels and resume find the data from any working directory."""
    cfg.data.path = os.path.abspath(os.path.expanduser(cfg.data.path))


def recorded_checksum(run_path: Path) -> str | None:
    """The manifest checksum of the data a run trained on (its copy of manifest.json)."""
    try:
        body = json.loads((Path(run_path) / "manifest.json").read_text())
        return body.get("checksum") if isinstance(body, dict) else None
    except (OSError, ValueError):
        return None


def missing_data_error(recorded: str, where: str, checksum: str | None) -> UserError:
    """The error for a run whose recorded data folder is not there any more."""
    relative = "" if os.path.isabs(recorded) else (
        ", recorded relative to the folder the run was started in")
    identity = f" (manifest checksum {checksum[:16]}...)" if checksum else ""
    return UserError(
        f"the data this run trained on, {recorded}{relative}, is not there any more (moved, "
        f"renamed or deleted; recorded in {where}); pass --data FOLDER, the same prepared "
        f"data{identity} at its new place"
    )


def check_run_data(recorded: str, where: str, checksum: str | None) -> None:
    """Raise `missing_data_error` when the run's recorded data folder is gone."""
    if not Path(recorded).exists():
        raise missing_data_error(recorded, where, checksum)


def other_data_note(checksum: str | None, data_checksum: str | None, folder: Path) -> str | None:
    if checksum and data_checksum and checksum != data_checksum:
        return (f"{folder} is not the prepared data this run trained on (manifest checksums "
                "differ); the results are for this data")
    return None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def changed_settings(saved: dict[str, Any], cfg: Config) -> list[str]:
    """`key: old -> new` for each setting the resume changes (keys the saved config lacks, from
    a newer toolkit with defaults, are not changes; nor is data.path spelled another way)."""
    old, new = _flat(saved), _flat(cfg.model_dump())
    changes = []
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        if key == "data.path" and isinstance(a, str) and os.path.abspath(a) == b:
            continue
        if a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes

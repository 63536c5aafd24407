"""Reading finished (or stopped) run folders as data: their config, manifest and metrics rows.

Shared by `report` and `plot`, which look at runs after the fact and never write into them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concutmix_cli.errors import UserError


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    """metrics.jsonl, one row per finished epoch."""
    label: str = ""
    """A short name for tables and legends (the folder name, or more of the path where two runs
    share a name)."""

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1]

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("name", "?"))

    @property
    def seed(self) -> Any:
        return self.config.get("runtime", {}).get("seed")

    @property
    def epochs(self) -> Any:
        return self.config.get("optim", {}).get("epochs")

    def setting(self, key: str) -> Any:
        """A config value by dotted key (`method.name`, `model.arch`); `method` and `preset` are
        short for `method.name` and the preset."""
        value: Any = self.config
        for part in {"method": "method.name"}.get(key, key).split("."):
            if not isinstance(value, dict) or part not in value:
                raise UserError(f"--group-by {key}: {self.path}/config.json has no such setting "
                                "(use method, preset or a config key such as model.arch)")
            value = value[part]
        return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object")
    return value


def read_run(path: Path | str) -> RunRecord:
    """A run folder with at least one finished epoch; a clear error otherwise."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run folder (no config.json)")
    metrics = path / "metrics.jsonl"
    rows = []
    if metrics.is_file():
        for number, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{metrics}: line {number} is not JSON") from None
            if isinstance(row, dict):
                rows.append(row)
    if not rows:
        raise UserError(f"{path}: no finished epoch yet (metrics.jsonl is missing or empty)")
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    return RunRecord(path, _read_json(path / "config.json"), manifest, rows)


def read_runs(paths: list[Path]) -> list[RunRecord]:
    """Each run once, labelled by folder name, or by as much of its path as tells them apart."""
    if not paths:
        raise UserError("give at least one run folder")
    seen: dict[Path, Path] = {}
    for p in paths:
        real = Path(p).resolve()
        if real in seen:
            raise UserError(f"{p}: given twice (also as {seen[real]}); give each run once")
        seen[real] = Path(p)
    records = [read_run(p) for p in paths]
    for depth in range(1, 100):
        labels = ["/".join(r.path.resolve().parts[-depth:]) for r in records]
        if len(set(labels)) == len(labels) or depth >= max(len(r.path.resolve().parts)
                                                           for r in records):
            break
    for record, label in zip(records, labels):
        record.label = label
    return records

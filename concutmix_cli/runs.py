"""Reading finished (or stopped) run folders as data: their config, manifest and metrics rows.

Shared by `report` and `plot`, which look at runs after the fact and never write into them.
A damaged metrics.jsonl costs what is damaged, said in a note, not the whole run: a line cut by a
kill ends the rows (as train reads them), a value that is not a number is taken as missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import read_json_lines

DATA_IDENTITY = ("dataset", "num_classes", "imbalance", "seed", "train_counts")
"""The manifest fields that tell which data a run trained on (not its checksum: that includes the
time the folder was prepared, so two preparations of the same data differ)."""


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    """metrics.jsonl, one row per finished epoch; every row has an integer `epoch`, and every
    other value is a number or None (`read_run` takes anything else as missing)."""
    label: str = ""
    """A short name for tables and legends (the folder name, or more of the path where two runs
    share a name)."""
    notes: list[str] = field(default_factory=list)
    """What was wrong in the run's files and how it was read (a cut line, a gap in the epochs,
    values that are not numbers), for the command to show beside its output."""

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1]

    def _section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def method(self) -> str:
        return str(self._section("method").get("name", "?"))

    @property
    def seed(self) -> Any:
        return self._section("runtime").get("seed")

    @property
    def epochs(self) -> Any:
        return self._section("optim").get("epochs")

    @property
    def data_identity(self) -> dict[str, Any]:
        """What identifies the data the run trained on (DATA_IDENTITY from its manifest.json)."""
        return {key: self.manifest.get(key) for key in DATA_IDENTITY}

    def setting(self, key: str) -> Any:
        """A config value by dotted key (`method.name`, `model.arch`); `method` and `preset` are
        short for `method.name` and the preset."""
        value: Any = self.config
        for part in {"method": "method.name"}.get(key, key).split("."):
            if not isinstance(value, dict) or part not in value:
                raise UserError(f"--group-by {key}: {self.path}/config.json has no such setting "
                                "(use method, preset or a config key such as model.arch)")
            value = value[part]
        if isinstance(value, dict):
            raise UserError(f"--group-by {key}: a section of settings, not one setting; give a "
                            f"key inside it, such as {key}.{next(iter(value), 'name')}")
        return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({' '.join(str(err).split())})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _epoch_of(row: dict[str, Any]) -> int | None:
    epoch = row.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1 else None


def _span(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:8]))
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > 8 else "")


def read_metrics_rows(metrics: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """metrics.jsonl as rows that tables and plots can use, and notes on what was not usable:
    rows end at the first line that is not a JSON object or has no epoch number; values that
    are not numbers (text, lists, true/false) become None; epochs that are not 1, 2, 3, ... in
    order are noted."""
    try:
        rows, stop = read_json_lines(metrics)
    except OSError as err:
        raise UserError(f"{metrics}: unreadable ({err.strerror or err})") from None
    notes = [f"metrics.jsonl {stop}"] if stop else []
    for index, row in enumerate(rows):
        if _epoch_of(row) is None:
            notes.append(f"metrics.jsonl row {index + 1} has no epoch number (epoch: "
                         f"{row.get('epoch')!r}); "
                         + (f"read the {index} row(s) before it" if index else "no row before it"))
            rows = rows[:index]
            break
    not_numbers: dict[str, int] = {}
    clean = []
    for row in rows:
        kept = {}
        for key, value in row.items():
            if value is None or _is_number(value):
                kept[key] = value
            else:
                kept[key] = None
                not_numbers[key] = not_numbers.get(key, 0) + 1
        clean.append(kept)
    if not_numbers:
        where = ", ".join(f"{key} ({count} row(s))" for key, count in not_numbers.items())
        notes.append(f"metrics.jsonl values that are not numbers, taken as missing: {where}")
    epochs = [row["epoch"] for row in clean]
    if epochs != list(range(1, len(epochs) + 1)):
        missing = sorted(set(range(1, max(epochs) + 1)) - set(epochs))
        repeated = sorted({e for e in epochs if epochs.count(e) > 1})
        what = "; ".join(part for part in (
            f"epoch(s) {_span(missing)} missing" if missing else "",
            f"epoch(s) {_span(repeated)} repeated" if repeated else "",
            "" if missing or repeated else "out of order") if part)
        notes.append(f"metrics.jsonl epochs go {_span(epochs)} ({what}); the last row is "
                     f"epoch {epochs[-1]}")
    return clean, notes


def read_run(path: Path | str) -> RunRecord:
    """A run folder with at least one finished epoch; a clear error otherwise."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run folder (no config.json)")
    metrics = path / "metrics.jsonl"
    if metrics.exists() and not metrics.is_file():
        raise UserError(f"{metrics}: not a file; a run keeps its metrics rows in a file of "
                        "this name")
    rows, notes = read_metrics_rows(metrics) if metrics.is_file() else ([], [])
    if not rows:
        why = f": {notes[0]}" if notes else " (metrics.jsonl is missing or empty)"
        raise UserError(f"{path}: no finished epoch yet{why}")
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    return RunRecord(path, _read_json(path / "config.json"), manifest, rows, notes=notes)


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

"""`concutmix report`: the last epoch of several runs side by side, and mean +- std over the runs
of each group (seeds of one method), as long-tailed papers report results.

Numbers come from each run's own metrics.jsonl (its last row: the last epoch's test split).
What was wrong in a run's files (runs.read_run) is a note of its row; a group whose runs trained
on different data (their manifests disagree on the dataset, its imbalance, subset seed or class
counts) is averaged all the same, with a note that says so.
Balanced accuracy (the mean of the per-class accuracies) is the stored value when the run has
one; on a test split with equally many images per class it equals top-1 exactly; otherwise the
run's last.safetensors is evaluated for its per-class accuracy.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concutmix_cli.errors import UserError
from concutmix_cli.runs import RunRecord, read_runs

METRICS = ("top1", "many", "medium", "few", "balanced", "ece")
"""Columns of the report; all but ECE are accuracies in [0, 1]."""
HEADERS = {"top1": "top-1", "many": "many", "medium": "medium", "few": "few",
           "balanced": "balanced", "ece": "ECE"}


@dataclass
class RunRow:
    run: str
    path: str
    method: str
    seed: Any
    epoch: int
    epochs: Any
    group: str
    values: dict[str, float | None]
    notes: list[str] = field(default_factory=list)


@dataclass
class GroupRow:
    group: str
    n: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    """Sample standard deviation (n - 1 in the denominator); None for a single run."""
    notes: list[str] = field(default_factory=list)
    """Why the mean may mislead (its runs trained on different data)."""


@dataclass
class Report:
    group_by: str | None
    runs: list[RunRow]
    groups: list[GroupRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "runs": [{"run": r.run, "path": r.path, "method": r.method, "seed": r.seed,
                      "epoch": r.epoch, "epochs": r.epochs, "group": r.group, **r.values,
                      "notes": r.notes} for r in self.runs],
            "groups": [{"group": g.group, "n": g.n,
                        **{m: {"mean": g.mean[m], "std": g.std[m]} for m in METRICS},
                        "notes": g.notes} for g in self.groups],
        }


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; (None, None) without values, std None for one."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def balanced_accuracy(record: RunRecord, evaluate: bool = True) -> tuple[float | None, str | None]:
    """The run's last-epoch balanced accuracy and, when it had to be worked out, how."""
    row = record.last
    if row.get("test_balanced_accuracy") is not None:
        return float(row["test_balanced_accuracy"]), None
    test_counts = record.manifest.get("test_counts")
    equal = (isinstance(test_counts, list) and test_counts
             and all(isinstance(c, int) for c in test_counts) and len(set(test_counts)) == 1)
    if equal and row.get("test_top1") is not None:
        return float(row["test_top1"]), None  # equal classes: the class mean is the sample mean
    if not evaluate:
        return None, "balanced accuracy not stored (evaluate with eval)"
    from concutmix_cli.engine.evaluate import evaluate_run

    found = evaluate_run(record.path)
    per_class = [a for a in found["per_class"] if a is not None]
    note = None
    if found.get("epoch") != row.get("epoch"):
        note = (f"balanced accuracy of last.safetensors (epoch {found.get('epoch')}), "
                f"not of metrics epoch {row.get('epoch')}")
    return (sum(per_class) / len(per_class) if per_class else None), note


def data_note(records: list[RunRecord]) -> str | None:
    """A note when `records` did not all train on the same data (runs.DATA_IDENTITY)."""
    kinds: list[tuple[dict[str, Any], list[str]]] = []
    for record in records:
        identity = record.data_identity
        for seen, labels in kinds:
            if seen == identity:
                labels.append(record.label)
                break
        else:
            kinds.append((identity, [record.label]))
    if len(kinds) < 2:
        return None
    differ = [key for key in kinds[0][0] if any(k[key] != kinds[0][0][key] for k, _ in kinds)]
    return (f"trained on different data ({', '.join(differ)} differ: "
            f"{' / '.join(', '.join(labels) for _, labels in kinds)}); the mean mixes datasets")


def build_report(paths: list[Path], group_by: str | None = None,
                 evaluate: bool = True) -> Report:
    """The report of `paths` (run folders), grouped by a config key (`method`, `preset`, ...)."""
    if group_by is not None and not group_by.strip():
        raise UserError("--group-by needs a setting: method, preset or a config key such as "
                        "model.arch")
    records = read_runs(paths)
    rows = []
    for record in records:
        last = record.last
        values: dict[str, float | None] = {
            "top1": last.get("test_top1"), "many": last.get("test_many"),
            "medium": last.get("test_medium"), "few": last.get("test_few"),
            "ece": last.get("test_ece")}
        values["balanced"], note = balanced_accuracy(record, evaluate)
        notes = [*record.notes, *([note] if note else [])]
        if isinstance(record.epochs, int) and last.get("epoch") != record.epochs:
            notes.append(f"unfinished: {last.get('epoch')} of {record.epochs} epochs")
        group = str(record.setting(group_by)) if group_by else "all"
        rows.append(RunRow(record.label, str(record.path), record.method, record.seed,
                           last["epoch"], record.epochs, group,
                           {m: values[m] for m in METRICS}, notes))
    groups = []
    if group_by:
        for name in dict.fromkeys(r.group for r in rows):  # first-seen order
            members = [r for r in rows if r.group == name]
            stats = {m: mean_std([r.values[m] for r in members if r.values[m] is not None])
                     for m in METRICS}
            note = data_note([rec for rec, row in zip(records, rows) if row.group == name])
            groups.append(GroupRow(name, len(members), {m: stats[m][0] for m in METRICS},
                                   {m: stats[m][1] for m in METRICS}, [note] if note else []))
    return Report(group_by, rows, groups)


# ----------------------------------------------------------------------------- formats


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "ece" else f"{100 * value:.2f}"


def fmt_pm(metric: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return fmt(metric, mean) + ("" if std is None else f" ± {fmt(metric, std)}")


def run_table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["run", "method", "seed", "epoch", *(HEADERS[m] for m in METRICS)]
    body = [[r.run, r.method, str(r.seed), f"{r.epoch}/{r.epochs}",
             *(fmt(m, r.values[m]) for m in METRICS)] for r in report.runs]
    return header, body


def group_table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The groups' table; a `note` column when a group has a note (different data)."""
    noted = any(g.notes for g in report.groups)
    header = [report.group_by or "group", "runs", *(HEADERS[m] for m in METRICS),
              *(["note"] if noted else [])]
    body = [[g.group, str(g.n), *(fmt_pm(m, g.mean[m], g.std[m]) for m in METRICS),
             *(["; ".join(g.notes) or "-"] if noted else [])] for g in report.groups]
    return header, body


def markdown(report: Report) -> str:
    """GitHub tables: the runs, then mean ± std per group (accuracies in %)."""
    def table(header: list[str], body: list[list[str]]) -> list[str]:
        align = ["---" if i == 0 or header[i] in ("run", "method", "note") else "---:"
                 for i in range(len(header))]
        return ["| " + " | ".join(row) + " |" for row in (header, align, *body)]

    lines = table(*run_table_rows(report))
    if report.groups:
        lines += ["", "Mean ± sample std over the runs of each group (last epoch, test split)."
                  , ""] + table(*group_table_rows(report))
    notes = [f"- {r.run}: {note}" for r in report.runs for note in r.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def csv_text(report: Report) -> str:
    """One row per run (`kind` run), then a mean and a std row per group; raw fractions; the
    last column holds the run's or the group's notes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["kind", "run", "method", "seed", "epoch", "group", *METRICS, "notes"])

    def num(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    for r in report.runs:
        writer.writerow(["run", r.run, r.method, r.seed, r.epoch, r.group,
                         *(num(r.values[m]) for m in METRICS), "; ".join(r.notes)])
    for g in report.groups:
        for kind, values in (("mean", g.mean), ("std", g.std)):
            writer.writerow([kind, "", "", "", "", g.group, *(num(values[m]) for m in METRICS),
                             "; ".join(g.notes)])
    return out.getvalue()

"""Our first epochs beside the authors' published CIFAR training logs, as a markdown table.

The authors' logs (../shared/reference/concutmix-logs/, README there) print a `Best Prec@1` line
only when an epoch beat every earlier one, so they give a running best on the test split; this
script turns our runs' metrics.jsonl into the same running best (and shows each epoch's own
accuracy beside it) so the curves can be compared like for like.

Usage: python benchmarks/fidelity_curve.py RUN [RUN ...] [--logs DIR] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

LOGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "concutmix-logs"
EPOCH = re.compile(r"^Epoch: \[(\d+)\]")
BEST = re.compile(r"^Best Prec@1: ([0-9.]+)")


def log_running_best(path: Path, epochs: int) -> list[float | None]:
    """Running best test top-1 (%) after epochs 1..`epochs` of one of the authors' logs."""
    best_by_epoch: dict[int, float] = {}
    epoch = None
    for line in path.read_text().splitlines():
        if m := EPOCH.match(line):
            epoch = int(m.group(1))
        elif (m := BEST.match(line)) and epoch is not None:
            best_by_epoch[epoch] = float(m.group(1))
    out, best = [], None
    for e in range(epochs):
        best = best_by_epoch.get(e, best)
        out.append(best)
    return out


def run_curve(run: Path, epochs: int) -> tuple[list[float], list[float]]:
    """(each epoch's test top-1, running best), in %, from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    own = [100 * r["test_top1"] for r in rows[:epochs]]
    best, running = float("-inf"), []
    for value in own:
        best = max(best, value)
        running.append(best)
    return own, running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--logs", type=Path, default=LOGS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--log-files", nargs="+", default=["cifar100_100.log", "run1.log"])
    args = parser.parse_args()
    header = "| | " + " | ".join(str(e + 1) for e in range(args.epochs)) + " |"
    print(header)
    print("|---|" + "---|" * args.epochs)
    fmt = lambda values: " | ".join("-" if v is None else f"{v:.2f}" for v in values)  # noqa: E731
    for name in args.log_files:
        print(f"| authors, {name} (running best) | {fmt(log_running_best(args.logs / name, args.epochs))} |")
    for run in args.runs:
        own, running = run_curve(run, args.epochs)
        print(f"| {run.name} (running best) | {fmt(running)} |")
        print(f"| {run.name} (each epoch) | {fmt(own)} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Summarize a gpu_check.sh output folder as a Markdown table (throughput and short runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _json_line(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def main(folder: str) -> None:
    out = Path(folder)
    equality = _json_line(out / "step-equality.json")
    print("| step mode | host syncs in the steps | max weight diff vs eager | loss sum |")
    print("|---|---|---|---|")
    for mode, r in ((equality or {}).get("modes") or {"(failed)": None}).items():
        if r is None:
            print(f"| {mode} | | | |")
            continue
        print(f"| {mode} | {r['host_syncs']} | {r['max_weight_diff_vs_eager']:.2e} | {r['loss_sum']:.4f} |")
    print()
    print("| throughput | samples/s | ceiling | ratio | TFLOP/s real / ceiling | device peak GB |")
    print("|---|---|---|---|---|---|")
    for name in ("eager", "sync_free", "graphed", "eager-perstep"):
        r = _json_line(out / f"throughput-{name}.json")
        if r is None:
            print(f"| {name} | failed | | | | |")
            continue
        views = f", {r['epoch_views_steps']} steps/views pass" if "epoch_views_steps" in r else ""
        print(f"| {r['method']} / {r['augment_on']} / {r.get('step', name)}{views} | {r['samples_per_s']:.0f} | "
              f"{r['ceiling_samples_per_s']:.0f} | {r['ratio']:.3f} | "
              f"{r.get('tflops', 0):.2f} / {r.get('ceiling_tflops', 0):.2f} | {r.get('device_peak_gb', 0):.2f} |")
    print()
    print("| short run | epochs | last-epoch test top-1 | many | medium | few | median s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for run in ("concutmix-eager", "concutmix-graphed"):
        path = out / run / "metrics.jsonl"
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        except OSError:
            rows = []
        if not rows:
            print(f"| {run} | failed | | | | | |")
            continue
        last = rows[-1]
        seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
        print(f"| {run} | {last['epoch']} | {_pct(last.get('test_top1'))} | {_pct(last.get('test_many'))} | "
              f"{_pct(last.get('test_medium'))} | {_pct(last.get('test_few'))} | {seconds:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")

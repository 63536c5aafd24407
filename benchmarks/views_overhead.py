#!/usr/bin/env python
"""Cost of making one step's views on the device path, apart from the model.

On a GPU the device path's views are bound by the CPU (Python, sampling the per-sample
parameters, launching many small kernels), not by the pixels. This script measures that part on
any machine: milliseconds per step of `DeviceBatches.batch` (all views of one ConCutMix step:
view 0, views 1 and 2, and the foreground view on mixed steps) and the number of ATen operations
one step dispatches. At a small batch size on a CPU the time is dominated by the same per-operation
overhead, so it tracks the GPU cost without a GPU.

    python benchmarks/views_overhead.py --data data/cifar100-lt-if100 --batch-size 8
    python benchmarks/views_overhead.py --data data/cifar100-lt-if100 --batch-size 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from concutmix_cli.data.loader import DeviceBatches  # noqa: E402
from concutmix_cli.data.prepared import load_prepared  # noqa: E402
from concutmix_cli.data.sampling import EpochPlanner  # noqa: E402

# Operations that only make a view of a tensor (no kernel runs).
_VIEW_OPS = {"view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "expand",
             "unbind", "split", "split_with_sizes", "permute", "t", "transpose", "alias",
             "detach", "as_strided", "lift_fresh"}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared in-memory folder (CIFAR-like)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps (each step is timed alone)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    data = load_prepared(args.data)
    planner = EpochPlanner(data.train.labels, seed=0, batch_size=args.batch_size, foreground="balanced",
                           mix_prob=0.5, mix_beta=1.0)
    batches = DeviceBatches(data, planner, True, device)
    steps = planner.steps_per_epoch()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in range(3):  # warm-up
        batches.batch(0, step % steps)
    times = {True: [], False: []}
    step_of = {}  # a mixed and an unmixed step, as the batches say
    for i in range(args.steps):
        step = (3 + i) % steps
        sync()
        start = time.perf_counter()
        batch = batches.batch(0, step)
        sync()
        times[batch.mixed].append(time.perf_counter() - start)
        step_of.setdefault(batch.mixed, step)
    ops = {}
    for mixed, step in sorted(step_of.items(), reverse=True):
        with _CountOps() as counter:
            batches.batch(0, step)
        kernels = sum(n for name, n in counter.counts.items() if name not in _VIEW_OPS)
        ops["mixed" if mixed else "unmixed"] = {"ops": sum(counter.counts.values()), "non_view_ops": kernels}
    result = {
        "batch_size": args.batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "ms_per_step_mixed": 1000 * statistics.median(times[True]) if times[True] else None,
        "ms_per_step_unmixed": 1000 * statistics.median(times[False]) if times[False] else None,
        "ops_per_step": ops, "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()

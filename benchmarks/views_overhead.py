#!/usr/bin/env python
"""Cost of making one step's views on the device path, apart from the model.

On a GPU the device path's views are bound by the CPU (Python, sampling the per-sample
parameters, launching many small kernels), not by the pixels. This script measures that part on
any machine: milliseconds per step of `DeviceBatches.batch` (all views of one ConCutMix step:
view 0, views 1 and 2, and the foreground view on mixed steps), the number of ATen operations
one step dispatches, and its host syncs (values read back from the images: none expected). At a small batch size on a CPU the time is dominated by the same per-operation
overhead, so it tracks the GPU cost without a GPU.

    python benchmarks/views_overhead.py --data data/cifar100-lt-if100 --batch-size 8
    python benchmarks/views_overhead.py --data data/cifar100-lt-if100 --batch-size 256 --device cuda

`--epoch-views K` (or `epoch`) instead compares `data.epoch_views`: the first `--steps` steps of
an epoch made per step and in chunks of K steps (`epoch`: all of them in one chunk), seconds per
step of each, ATen ops per step of each, and whether every tensor of every batch is identical.

    python benchmarks/views_overhead.py --data data/cifar100-lt-if100 --batch-size 256 --steps 12 --epoch-views epoch
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
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from concutmix_cli.mixing import CutMix

from concutmix_cli.data.loader import DeviceBatches  # noqa: E402
from concutmix_cli.data.prepared import load_prepared  # noqa: E402
from concutmix_cli.data.sampling import EpochPlanner  # noqa: E402

# Operations that only make a view of a tensor (no kernel runs).
VIEW_OPS = {"view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "expand",
            "unbind", "split", "split_with_sizes", "permute", "t", "transpose", "alias",
            "detach", "as_strided", "lift_fresh"}
# Reading a value back to the host, or a shape that depends on values: a sync on a GPU.
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "equal", "is_nonzero", "unique",
            "_unique2", "unique_consecutive", "repeat_interleave", "masked_scatter"}


class CountOps(TorchDispatchMode):
    """Counts the ATen ops dispatched, and the host syncs: `SYNC_OPS` ops (or boolean-mask
    indexing) on a tensor computed from `pixels`, tracked by tainting every output of an op with
    a tainted input. Those stall a GPU and break CUDA-graph capture; the same ops on the CPU-side
    random parameters do not."""

    def __init__(self, pixels=()):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.pixel_ops = 0  # kernels on the images (the device's launches), not the CPU-side draws
        self.tainted = WeakTensorKeyDictionary()
        for t in pixels:
            self.tainted[t] = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        leaves = pytree.tree_leaves((args, kwargs))
        dirty = any(isinstance(t, torch.Tensor) and t in self.tainted for t in leaves)
        self.pixel_ops += dirty and name not in VIEW_OPS
        if dirty and (name in SYNC_OPS or (name == "index" and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in pytree.tree_leaves(args[1:])))):
            self.syncs[name] += 1
        out = func(*args, **kwargs)
        if dirty:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.tainted[t] = True
        return out

    def summary(self) -> dict:
        return {"ops": sum(self.counts.values()),
                "non_view_ops": sum(n for k, n in self.counts.items() if k not in VIEW_OPS),
                "pixel_ops": self.pixel_ops,
                "host_syncs": sum(self.syncs.values()), "sync_ops": dict(self.syncs)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared in-memory folder (CIFAR-like)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps (each step is timed alone)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epoch-views", default=None, help="compare per-step views with chunks of K steps (or epoch)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.epoch_views is not None:
        return compare_epoch_views(args)

    device = torch.device(args.device)
    data = load_prepared(args.data)
    planner = EpochPlanner(data.train.labels, seed=0, batch_size=args.batch_size, 
                           cutmix=CutMix(0.5, 1.0, "balanced", 32))
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
        with CountOps([batches.images]) as counter:
            batches.batch(0, step)
        ops["mixed" if mixed else "unmixed"] = counter.summary()
    result = {
        "batch_size": args.batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "ms_per_step_mixed": 1000 * statistics.median(times[True]) if times[True] else None,
        "ms_per_step_unmixed": 1000 * statistics.median(times[False]) if times[False] else None,
        "ops_per_step": ops, "torch": torch.__version__,
    }
    emit(result, args.json)
    return result


def compare_epoch_views(args) -> dict:
    """Per-step views against chunks of `args.epoch_views` steps, over the first `args.steps` steps."""
    device = torch.device(args.device)
    data = load_prepared(args.data)
    planner = EpochPlanner(data.train.labels, seed=0, batch_size=args.batch_size, 
                           cutmix=CutMix(0.5, 1.0, "balanced", 32), max_steps=args.steps)
    chunk = args.epoch_views if args.epoch_views == "epoch" else int(args.epoch_views)
    made, seconds, ops = {}, {}, {}
    for name, choice in (("per_step", "off"), ("chunked", chunk)):
        batches = DeviceBatches(data, planner, True, device, epoch_views=choice)
        list(batches.epoch(1))  # warm-up (another epoch: other parameters, same shapes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        made[name] = [b.tensors() for b in batches.epoch(0)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[name] = (time.perf_counter() - start) / planner.steps_per_epoch()
        with CountOps([batches.images]) as counter:
            list(batches.epoch(0))
        ops[name] = {k: v / planner.steps_per_epoch() for k, v in counter.summary().items()
                     if k in ("non_view_ops", "pixel_ops")}
    identical = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                    for a, b in zip(made["per_step"], made["chunked"], strict=True))
    result = {"batch_size": args.batch_size, "steps": planner.steps_per_epoch(), "epoch_views": chunk,
              "device": str(device), "threads": torch.get_num_threads(),
              "s_per_step": seconds, "ops_per_step": ops, "identical": identical,
              "torch": torch.__version__}
    emit(result, args.json)
    return result


def emit(result: dict, as_json: bool) -> None:
    """Print a benchmark's result: one JSON document, or one `key: value` line per entry."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()

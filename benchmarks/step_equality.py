#!/usr/bin/env python
"""Do the step modes train the same model? Eager, sync-free and (on CUDA) graphed steps on the
same batches from the same initial weights; prints the largest weight difference of each against
eager, the epoch sums, and the host syncs each mode still makes (CUDA:
`torch.cuda.set_sync_debug_mode("warn")` counts them; on CPU there are none to count).

    python benchmarks/step_equality.py --data data/cifar100-lt-if100 --steps 24     # on the GPU
    python benchmarks/step_equality.py --synthetic --steps 6 --json                # CPU smoke test

On CPU, eager and sync-free agree bit for bit (tests/test_steps.py). On CUDA, cuDNN may pick
other algorithms for a captured graph, so small differences are reported, not assumed away; eager
is trained twice ("eager_again"), so that the noise of the card's own kernels (atomics in the
backward pass) is measured beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from argtypes import Parser, positive, run  # noqa: E402 (beside this file)
from concutmix_cli.config import build_config  # noqa: E402
from concutmix_cli.data.prepare import prepare  # noqa: E402
from concutmix_cli.engine.checkpoint import RunFolder  # noqa: E402
from concutmix_cli.engine.loop import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a prepared folder")
    p.add_argument("--synthetic", action="store_true", help="built-in synthetic data (CPU smoke)")
    p.add_argument("--steps", type=positive(int), default=24)
    p.add_argument("--batch-size", type=positive(int), default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def trainer_for(mode: str, data: Path, args, workdir: Path) -> Trainer:
    cfg = build_config(preset="cifar100-lt-if100", overrides=[
        f'data.path="{data}"', 'data.augment_on="device"', "optim.warmup_epochs=0",
        "method.rectify_after_epoch=-1", "method.cutmix_prob=0.5", "method.top_k=3",
        f'runtime.step="{mode}"'],
        shortcuts={"optim.batch_size": args.batch_size, "runtime.device": args.device})
    return Trainer(cfg, RunFolder(workdir / mode))


def train(trainer: Trainer, steps: int) -> tuple[int, dict[str, float]]:
    """`steps` real steps from epoch 0 on; returns (host syncs seen in them, epoch sums)."""
    trainer.train_model.train()
    trainer.totals.reset()
    done, epoch, syncs = 0, 0, 0
    cuda = trainer.device.type == "cuda"
    while done < steps:
        for batch in trainer.batches.epoch(epoch, 0):
            if done == steps:
                break
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                trainer.step(batch)
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
            syncs += sum("synchroniz" in str(w.message) for w in caught)
            done += 1
        epoch += 1
    return syncs, trainer.totals.read()


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="concutmix-steps-") as tmp:
        workdir = Path(tmp)
        data = args.data
        if data is None:
            data = prepare("synthetic-lt", out=workdir / "data", n_max=200, imbalance=10).out
        modes = ["eager", "eager_again", "sync_free"]
        probe = trainer_for("eager", data, args, workdir / "probe")
        if probe.device.type == "cuda":
            modes.append("graphed")
        results, reference = {}, None
        for mode in modes:
            trainer = trainer_for(mode.removesuffix("_again"), data, args, workdir / mode)
            syncs, sums = train(trainer, args.steps)
            weights = {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}
            if reference is None:
                reference = weights
            diff = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
            results[mode] = {"host_syncs": syncs, "max_weight_diff_vs_eager": diff,
                             "loss_sum": sums["loss"], "steps": sums["steps"], "bad": sums["bad"]}
            del trainer
    out = {"steps": args.steps, "device": str(probe.device), "modes": results}
    if args.json:
        print(json.dumps(out))
    else:
        for mode, r in results.items():
            print(f"{mode:10s} host syncs {r['host_syncs']:4d}  max |w - w_eager| "
                  f"{r['max_weight_diff_vs_eager']:.3e}  loss sum {r['loss_sum']:.6f}")
    return out


if __name__ == "__main__":
    run(main)

#!/usr/bin/env python
"""Training throughput against the model-only ceiling, in one process.

(a) ceiling: forward + backward + optimizer step of the model on ready-made tensors of the shapes
    one training step feeds it (3B images for bcl/concutmix, B for ce/cutmix);
(b) the real thing: the training loop on real data (loading, augmentation, CutMix, losses,
    rectification and all) for a fixed number of steps after warm-up.
The timed steps of (a) and (b) alternate in `--rounds` rounds (4), so that a machine whose speed
drifts (a shared CPU) slows both alike; the ratio of each round is printed too.
Both use the same model, batch size, thread count, device and step mode (`--step`: eager,
sync_free or graphed; with graphed the ceiling is captured in a CUDA graph too). Prints samples/s
of both, the ratio (b)/(a), the achieved TFLOP/s of each (the step's FLOPs counted once with
torch's FlopCounterMode: forward + backward of the network, so the distance to the card is
visible), a simple profile of where a real step's time goes (synchronized, measured separately),
peak memory and the device. `--json`: the last line is one JSON object.

    python benchmarks/throughput.py --source ../shared/data/cifar100.npz --method concutmix
    python benchmarks/throughput.py --synthetic --steps 3 --json        # what CI runs
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from argtypes import Parser, positive, run  # noqa: E402 (beside this file)
from concutmix_cli.config import STEP_MODES, build_config, read_by_method  # noqa: E402
from concutmix_cli.data.prepare import prepare  # noqa: E402
from concutmix_cli.engine.checkpoint import RunFolder  # noqa: E402
from concutmix_cli.engine.loop import Trainer  # noqa: E402
from concutmix_cli.methods import METHODS  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar100.npz"


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CIFAR-100 .npz archive")
    p.add_argument("--data", type=Path, help="an already prepared folder (skips preparing)")
    p.add_argument("--synthetic", action="store_true", help="use built-in synthetic data (CI)")
    p.add_argument("--preset", default="cifar100-lt-if100",
                   help="the recipe (model, views, batch size) measured [cifar100-lt-if100]")
    p.add_argument("--method", default="concutmix", choices=list(METHODS))
    p.add_argument("--batch-size", type=positive(int), default=None, help="[the preset's]")
    p.add_argument("--steps", type=positive(int), default=20, help="timed steps")
    p.add_argument("--warmup", type=positive(int, allow_zero=True), default=3, help="untimed steps first")
    p.add_argument("--rounds", type=positive(int), default=4,
                   help="alternate real and ceiling steps in this many rounds (1: one after the other)")
    p.add_argument("--profile-steps", type=positive(int), default=None, help="synchronized profiled steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--augment-on", default="auto", choices=["auto", "loader", "device"])
    p.add_argument("--step", default="auto", choices=STEP_MODES,
                   help="runtime.step")
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    p.add_argument("--pageable-staging", action="store_true",
                   help="copy the device path's parameters from pageable memory instead of "
                        "through pinned buffers (to measure what the pinned staging buys)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepared_folder(args, workdir: Path) -> Path:
    if args.data is not None:
        return args.data
    if args.synthetic or not args.source.is_file():
        return prepare("synthetic-lt", out=workdir / "data", n_max=200, imbalance=10).out
    return prepare("cifar100-lt", out=workdir / "data", imbalance=100, source=args.source).out


def build_trainer(args, data: Path, workdir: Path) -> Trainer:
    total = args.warmup + args.steps + (args.profile_steps or max(args.steps // 2, 2))
    from concutmix_cli.data.longtail import read_manifest

    num_classes = int(read_manifest(data)["num_classes"])
    overrides = read_by_method(args.method, [
        f"method.top_k={min(30, num_classes)}", f'data.path="{data}"', f"data.augment_on=\"{args.augment_on}\"",
        f"data.num_workers={args.num_workers}", "optim.warmup_epochs=0", "optim.epochs=1000",
        "method.rectify_after_epoch=-1", "method.cutmix_prob=0.5", f'runtime.step="{args.step}"',
        *args.overrides,
    ])
    cfg = build_config(preset=args.preset, overrides=overrides,
                       shortcuts={"optim.batch_size": args.batch_size, "method.name": args.method,
                                  "runtime.device": args.device})
    trainer = Trainer(cfg, RunFolder(workdir / "run"))
    trainer.total_steps_wanted = total
    return trainer


def real_steps(trainer: Trainer):
    """Endless batches of the real pipeline, epoch after epoch."""
    epoch = 0
    while True:
        yield from trainer.batches.epoch(epoch, 0)
        epoch += 1


def train_one(trainer: Trainer, batch) -> None:
    """One step exactly as `concutmix train` makes it (finiteness check and sums included)."""
    trainer.step(batch)


def optimizer_step(trainer: Trainer) -> None:
    """The eager optimizer step (through the grad scaler), outside the step object."""
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure_real(trainer: Trainer, stream, steps: int) -> tuple[float, int]:
    """`steps` real steps from `stream`: (seconds, samples)."""
    _sync(trainer.device)
    samples = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(stream)
        train_one(trainer, batch)
        samples += batch.size
    _sync(trainer.device)
    return time.perf_counter() - start, samples


def profile_real(trainer: Trainer, steps: int) -> dict[str, float]:
    """Seconds per step in each phase, with a device sync at each boundary (slower than the
    timed run; only the proportions matter)."""
    device = trainer.device
    phases = {"data": 0.0, "forward_and_loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    stream = real_steps(trainer)
    train_one(trainer, next(stream))
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        batch = next(stream)
        _sync(device)
        t1 = time.perf_counter()
        result = trainer.step.step_fn(trainer.train_model, batch, batch.epoch)
        _sync(device)
        t2 = time.perf_counter()
        trainer.scaler.scale(result.loss).backward()
        _sync(device)
        t3 = time.perf_counter()
        optimizer_step(trainer)
        _sync(device)
        t4 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[key] += dt
    return {k: v / steps for k, v in phases.items()}


def ceiling_step(trainer: Trainer):
    """The model alone on ready-made tensors of a real step's shapes: (a callable making one
    step, samples per step, FLOPs per sample of a training step). Captured in a CUDA graph when
    the step mode is graphed."""
    device, b = trainer.device, trainer.cfg.optim.batch_size // trainer.ctx.world_size
    contrast = trainer.method.contrast
    size = trainer.data.manifest.get("image_size") or 224
    x = torch.randn((3 * b if contrast else b), 3, size, size, device=device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, trainer.data.num_classes, (b,), device=device)
    model, dtype = trainer.train_model, trainer.precision.autocast_dtype

    graphed = trainer.step_mode == "graphed"

    def one() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None,
                            cache_enabled=not graphed):
            out = model(x, project=contrast)
            loss = torch.nn.functional.cross_entropy(out.logits[:b].float(), y)
            if contrast:
                proto = trainer.model.prototypes()
                loss = loss + out.projection.float().square().mean() + proto.float().square().mean()
        trainer.scaler.scale(loss).backward()
        if graphed:  # no host-side scale check inside a capture
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        else:
            optimizer_step(trainer)

    flops_per_sample = count_flops(one) / b
    if not graphed:
        return one, b, flops_per_sample
    stream = torch.cuda.Stream()  # the captured model-only step: what a graphed loop should approach
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            one()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one()
    return graph.replay, b, flops_per_sample


def measure_ceiling(trainer: Trainer, step, steps: int) -> float:
    """`steps` model-only steps: seconds."""
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(trainer.device)
    return time.perf_counter() - start


def measure(trainer: Trainer, warmup: int, steps: int, rounds: int, profile_steps: int) -> dict:
    """The real loop and the ceiling, `steps` timed steps of each in `rounds` alternating rounds
    (real, then ceiling): a machine whose speed drifts over minutes (a shared CPU, a GPU's clock)
    then slows both alike instead of whichever ran second; then the profile. Graphed: one round,
    in the order real, profile, ceiling (the ceiling's capture must not come between the real
    loop's graphs and their replays: both use the parameters' gradients)."""
    stream = real_steps(trainer)
    for _ in range(warmup):  # the real warm-up first: a graphed loop captures its steps here
        train_one(trainer, next(stream))
    graphed = trainer.step_mode == "graphed"
    rounds = 1 if graphed else max(1, min(rounds, steps))
    sizes = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    if graphed:
        real = measure_real(trainer, stream, steps)
        profile = profile_real(trainer, profile_steps)
    step, per_step, flops = ceiling_step(trainer)
    for _ in range(warmup):
        step()
    real_s = ceiling_s = 0.0
    samples = 0
    ratios = []
    for n in sizes:
        seconds, got = real if graphed else measure_real(trainer, stream, n)
        ceil_seconds = measure_ceiling(trainer, step, n)
        ratios.append((got / seconds) / (n * per_step / ceil_seconds))
        real_s, ceiling_s, samples = real_s + seconds, ceiling_s + ceil_seconds, samples + got
    if not graphed:
        profile = profile_real(trainer, profile_steps)
    return {"samples_per_s": samples / real_s, "ceiling_samples_per_s": steps * per_step / ceiling_s,
            "samples": samples, "flops_per_sample": flops, "round_ratios": ratios,
            "profile": profile}


def count_flops(step) -> int:
    """The FLOPs torch's FlopCounterMode counts in one call of `step` (matmuls and convolutions,
    forward and backward; the optimizer's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def peak_memory(device: torch.device) -> dict[str, float]:
    out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        out["device_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def use_pageable_staging() -> None:
    """The A/B of `shipping.stage`: the same copies without the pinned buffer (the device path
    reads `stage` from these two modules)."""
    from concutmix_cli.data import loader
    from concutmix_cli.data.device import shipping

    def pageable(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        return host if device.type == "cpu" else host.to(device, non_blocking=True)

    shipping.stage = loader.stage = pageable


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.pageable_staging:
        use_pageable_staging()
    with tempfile.TemporaryDirectory(prefix="concutmix-bench-") as tmp:
        workdir = Path(tmp)
        data = _prepared_folder(args, workdir)
        trainer = build_trainer(args, data, workdir)
        trainer.train_model.train()
        timed = measure(trainer, args.warmup, args.steps, args.rounds,
                        args.profile_steps or max(args.steps // 2, 2))
        real, ceiling, flops, profile = (timed["samples_per_s"], timed["ceiling_samples_per_s"],
                                         timed["flops_per_sample"], timed["profile"])
        result = {
            "preset": args.preset, "method": args.method, "batch_size": trainer.cfg.optim.batch_size,
            "arch": trainer.cfg.model.arch, "num_workers": args.num_workers,
            "augment_on": args.augment_on,
            "prefetch": bool(getattr(trainer.batches, "prefetch", False)),
            "staging": "pageable" if args.pageable_staging else "pinned",
            "epoch_views_steps": getattr(trainer.batches, "chunk_steps", None),
            "device": device_name(trainer.device), "precision": trainer.precision.name,
            "channels_last": trainer.channels_last, "data": str(trainer.data.manifest["dataset"]),
            "steps": args.steps, "samples": timed["samples"], "rounds": len(timed["round_ratios"]),
            "samples_per_s": real, "ceiling_samples_per_s": ceiling, "ratio": real / ceiling,
            "round_ratios": timed["round_ratios"],
            "augment_resolved": trainer.parts.augment_on, "step": trainer.step_mode,
            "step_gflop": flops * trainer.cfg.optim.batch_size / 1e9,
            "tflops": flops * real / 1e12, "ceiling_tflops": flops * ceiling / 1e12,
            "profile_s_per_step": profile, **peak_memory(trainer.device),
            "torch": torch.__version__,
        }
    if not args.json or sys.stdout.isatty():
        _print_table(result)
    if args.json:
        print(json.dumps(result))
    return result


def _print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"throughput: {r['method']} on {r['data']}, batch {r['batch_size']}, {r['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("(b) real training loop", f"{r['samples_per_s']:.1f} samples/s")
    table.add_row("(a) model-only ceiling", f"{r['ceiling_samples_per_s']:.1f} samples/s")
    table.add_row("ratio (b)/(a)", f"{r['ratio']:.3f}")
    if r["rounds"] > 1:
        table.add_row(f"ratio in each of {r['rounds']} rounds",
                      " ".join(f"{x:.2f}" for x in r["round_ratios"]))
    table.add_row("step mode", r["step"])
    table.add_row("FLOPs per step (fwd + bwd)", f"{r['step_gflop']:.1f} GFLOP")
    table.add_row("achieved: real / ceiling", f"{r['tflops']:.3f} / {r['ceiling_tflops']:.3f} TFLOP/s")
    for phase, seconds in r["profile_s_per_step"].items():
        table.add_row(f"profile: {phase}", f"{1000 * seconds:.1f} ms/step")
    for key in ("host_peak_rss_gb", "device_peak_gb"):
        if key in r:
            table.add_row(key.replace("_", " "), f"{r[key]:.2f}")
    table.add_row("precision / channels_last", f"{r['precision']} / {r['channels_last']}")
    Console(stderr=True).print(table)


if __name__ == "__main__":
    run(main)

"""The training step, in each of its modes (`runtime.step`), behind one interface: a step object
is called with a `Batch`, trains on it and adds its sums and counts into the run's `StepTotals`.

- `EagerStep`: checks each loss on the host, drops a non-finite batch at once; gradient
  accumulation and the fp16 grad scaler;
- `SyncFreeStep`: the same arithmetic with no host sync;
- `GraphedStep`: `SyncFreeStep` captured in CUDA graphs.
`make_step` builds the one a run uses.

On a GPU a ResNet-32 step on 32x32 images is bound by the CPU launching kernels; every host sync
(`.item()`, `bool(tensor)`, a copy to the host) makes the CPU wait for the GPU, so the two stop
overlapping. Here nothing in a step asks the device for a value:
- the learning rate is a device tensor that fused SGD reads from device memory (updated in place
  at each epoch, `set_lr`), so a captured step sees the new rate;
- a non-finite loss is not tested on the host: it sets the `found_inf` flag fused SGD already has
  for the fp16 grad scaler, and the kernel skips the whole update (weights and momentum), which is
  what the eager step's "drop the batch" does; the step is counted on the device;
- the epoch's sums and counts (`StepTotals`) stay on the device and are read at logging points.

`GraphedStep` then records the whole step (forward under autocast, losses, rectification,
backward, fused SGD) in one CUDA graph per step variant and replays it. Constraints met here:
- a variant is (mixed, rectified): the Python branches of `MethodStep` differ between them, so
  each has its own graph; its first `WARMUP_STEPS` occurrences run eagerly, as real training
  steps, on a side stream (CUDA graphs need warmed-up kernels and allocator);
- inputs are copied into the graph's own static tensors before each replay (device to device);
- autocast's weight cache is off (`MethodStep(autocast_cache=False)`): a cached cast made during
  capture would be freed memory on replay;
- graphs are made lazily, after a resume has loaded the optimizer state (the momentum buffers and
  the lr a graph reads must be the tensors it was captured with), and never shared between
  variants' memory pools, since variants replay in data order, not capture order;
- one process, no gradient accumulation, no fp16 grad scaler (their host-side logic is eager).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable, Protocol

import torch

from concutmix_cli.config import OptimConfig
from concutmix_cli.data.batch import Batch
from concutmix_cli.engine import distributed as dist_utils
from concutmix_cli.engine.step import MethodStep, StepResult
from concutmix_cli.errors import UserError

WARMUP_STEPS = 3
"""Eager occurrences of a step variant before its capture."""

SUM_KEYS = ("loss", "cls", "bcl", "correct", "rect_weight")
COUNT_KEYS = ("samples", "steps", "mixed", "rectified", "skipped", "bad")


def resolve_step_mode(choice: str, device: torch.device, distributed: bool, accumulate: int,
                      grad_scaler: bool) -> str:
    """`runtime.step` for this run: auto is eager (until the GPU check has measured the others);
    sync_free and graphed are refused, in one line naming the reason, where they cannot run."""
    if choice in ("auto", "eager"):
        return "eager"
    reasons = [why for bad, why in (
        (choice == "graphed" and device.type != "cuda", "a CUDA device (CUDA graphs)"),
        (distributed, "a single process (DDP's all-reduce is eager)"),
        (accumulate != 1, "optim.accumulate = 1"),
        (grad_scaler, "no fp16 grad scaler (use runtime.amp = bf16 or off)"),
    ) if bad]
    if reasons:
        raise UserError(f"runtime.step = {choice} needs {'; '.join(reasons)}; "
                        "use runtime.step = eager")
    return choice


def build_sgd(params, optim: OptimConfig, device: torch.device) -> tuple[torch.optim.SGD, torch.Tensor]:
    """SGD with the learning rate as a device tensor, fused where this torch has it (CPU and CUDA
    since 2.4): the fused kernel reads the rate from device memory and honours `found_inf`.
    Returns (optimizer, lr tensor); keep the tensor and change it with `set_lr`."""
    # float32: the CUDA kernel reads a float; on CPU the result equals a Python-float rate bit for bit
    lr = torch.tensor(float(optim.lr), dtype=torch.float32, device=device)
    options = dict(momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov)
    params = list(params)
    try:
        optimizer = torch.optim.SGD(params, lr=lr, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
        optimizer = torch.optim.SGD(params, lr=float(optim.lr), **options)
    return optimizer, lr


def set_lr(optimizer: torch.optim.Optimizer, lr: torch.Tensor, value: float) -> None:
    """Set the rate in place, and make every group read this one tensor again (a resumed
    optimizer state brings its own saved rate). Unfused SGD takes the rate as a float."""
    lr.fill_(value)
    for group in optimizer.param_groups:
        group["lr"] = lr if group.get("fused") else float(value)


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step` skips its update on a nonzero `found_inf` (the fused kernels)."""
    return all(group.get("fused") for group in optimizer.param_groups)


class StepTotals:
    """The epoch's running sums (float32) and counts (int64) on the training device.

    Sums and counts continue a restored mid-epoch state exactly (a float32 survives the round
    trip through float64). A step whose loss was not finite adds nothing but `bad`."""

    def __init__(self, device: torch.device, restored: dict[str, float] | None = None):
        self.sums = {k: torch.zeros((), device=device) for k in SUM_KEYS}
        self.counts = {k: torch.zeros((), dtype=torch.int64, device=device) for k in COUNT_KEYS}
        self.reset(restored)

    def reset(self, restored: dict[str, float] | None = None) -> None:
        """Start an epoch (from a restored mid-epoch state), in place: a captured step keeps
        adding into these very tensors."""
        restored = restored or {}
        for key, tensor in self.sums.items():
            tensor.fill_(float(restored.get(key, 0.0)))
        for key, tensor in self.counts.items():
            tensor.fill_(int(restored.get(key, 0)))

    def add(self, result: StepResult, batch: Batch, ok: torch.Tensor | None = None) -> None:
        """Add one step. `ok`: a device bool (sync-free step); None when the caller knows the loss
        was finite (eager step)."""
        n = batch.size
        keep = (lambda value: value) if ok is None else (
            lambda value: torch.where(ok, value, torch.zeros_like(value)))
        self.sums["loss"] += keep(result.loss.detach() * n)
        self.sums["cls"] += keep(result.terms["cls"] * n)
        if "bcl" in result.terms:
            self.sums["bcl"] += keep(result.terms["bcl"] * n)
        self.sums["correct"] += keep(result.correct.to(self.sums["correct"].dtype))
        if result.rect_weight is not None:
            self.sums["rect_weight"] += keep(result.rect_weight)
        one = torch.ones((), dtype=torch.int64, device=result.loss.device) if ok is None else ok.long()
        self.counts["samples"] += one * n
        self.counts["steps"] += one
        if batch.mixed:
            self.counts["mixed"] += one
        if result.rect_weight is not None:
            self.counts["rectified"] += one
        if ok is not None:
            self.counts["bad"] += 1 - one

    def add_skipped(self, skipped: bool) -> None:
        self.counts["skipped"] += int(skipped)

    def read(self) -> dict[str, float]:
        """All sums and counts as floats (one host sync)."""
        values = torch.stack([v.double() for v in (*self.sums.values(), *self.counts.values())])
        return dict(zip((*SUM_KEYS, *COUNT_KEYS), values.tolist()))

    def mean_loss(self) -> float:
        return float(self.sums["loss"]) / max(int(self.counts["samples"]), 1)


class TrainStep(Protocol):
    """What every step mode is: called with a batch, it trains on it and adds the batch's sums
    and counts into its `totals` (the run's one `StepTotals`)."""

    step_fn: MethodStep
    totals: StepTotals

    def __call__(self, batch: Batch) -> None: ...


def ends_accumulation(step: int, accumulate: int, steps_per_epoch: int) -> bool:
    """Whether the optimizer steps after `step` (every `accumulate` steps and at epoch end)."""
    return (step + 1) % accumulate == 0 or step + 1 == steps_per_epoch


class EagerStep:
    """Loss, a host check that it is finite, backward and, at an accumulation boundary, the
    optimizer step (through the fp16 grad scaler when it is on).

    A non-finite loss drops the batch on every process together (one rank leaving DDP's
    all-reduce would hang the others) and is reported at once through `on_bad(batch, result)`,
    which may raise to stop the run."""

    def __init__(self, model: torch.nn.Module, step_fn: MethodStep, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, totals: StepTotals, ctx: dist_utils.DistContext,
                 accumulate: int, steps_per_epoch: int,
                 on_bad: Callable[[Batch, StepResult], None]):
        self.model, self.step_fn, self.optimizer, self.scaler = model, step_fn, optimizer, scaler
        self.totals, self.ctx, self.on_bad = totals, ctx, on_bad
        self.accumulate, self.steps_per_epoch = accumulate, steps_per_epoch

    def __call__(self, batch: Batch) -> None:
        result = self.step_fn(self.model, batch, batch.epoch)
        if dist_utils.any_rank(not bool(torch.isfinite(result.loss)), self.ctx):
            self.on_bad(batch, result)
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.scaler.scale(result.loss / self.accumulate).backward()
        skipped = False
        if ends_accumulation(batch.step, self.accumulate, self.steps_per_epoch):
            skipped = self.optimizer_step()
        self.totals.add(result, batch)
        self.totals.add_skipped(skipped)

    def optimizer_step(self) -> bool:
        """Unscale, step and zero the gradients; True when the fp16 grad scaler skipped the step."""
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return scale_before is not None and self.scaler.get_scale() < scale_before


class SyncFreeStep:
    """Forward, loss, backward and the optimizer step of one batch, with no host sync.

    The arithmetic is `EagerStep`'s, so the weights after k steps are the same; a non-finite
    loss skips the update through `found_inf` instead of a host test, and is counted on the
    device (`totals.counts["bad"]`, read by the loop at its logging points)."""

    def __init__(self, model: torch.nn.Module, step_fn: MethodStep, optimizer: torch.optim.SGD,
                 totals: StepTotals):
        if not supports_found_inf(optimizer):
            raise ValueError("the sync-free step needs fused SGD (torch >= 2.4), which skips a "
                             "non-finite step on the device")
        self.model = model
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.totals = totals

    def __call__(self, batch: Batch) -> None:
        result = self.step_fn(self.model, batch, batch.epoch)
        ok = torch.isfinite(result.loss)
        self.optimizer.grad_scale = None
        self.optimizer.found_inf = (~ok).to(torch.float32)
        result.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.totals.add(result, batch, ok)


class GraphedStep:
    """`SyncFreeStep` captured in one CUDA graph per step variant and replayed (CUDA only).

    The totals must be the same `StepTotals` object for the whole run (a graph adds into the
    tensors it was captured with): start each epoch with `totals.reset`, never a new object.
    Capture is lazy, so a resume loads the optimizer's state before any graph reads it."""

    def __init__(self, body: SyncFreeStep, warmup_steps: int = WARMUP_STEPS):
        if body.step_fn.autocast_cache:
            raise ValueError("capture needs MethodStep(autocast_cache=False)")
        self.body = body
        self.step_fn = body.step_fn
        self.totals = body.totals
        self.warmup_steps = warmup_steps
        self.graphs: dict[tuple[bool, bool], tuple[Batch, torch.cuda.CUDAGraph]] = {}
        self.eager_runs: Counter[tuple[bool, bool]] = Counter()
        self.side_stream = torch.cuda.Stream()

    def variant(self, batch: Batch) -> tuple[bool, bool]:
        step_fn = self.body.step_fn
        return batch.mixed, batch.mixed and step_fn.method.rectifies_in(step_fn.cfg, batch.epoch)

    def __call__(self, batch: Batch) -> None:
        key = self.variant(batch)
        if key in self.graphs:
            static, graph = self.graphs[key]
            for name, tensor in batch.tensors().items():
                getattr(static, name).copy_(tensor, non_blocking=True)
            graph.replay()
            return
        if self.eager_runs[key] < self.warmup_steps:
            self.eager_runs[key] += 1
            current = torch.cuda.current_stream()
            self.side_stream.wait_stream(current)
            with torch.cuda.stream(self.side_stream):
                self.body(batch)
            current.wait_stream(self.side_stream)
            return
        static = replace(batch, **{k: v.clone() for k, v in batch.tensors().items()})
        graph = torch.cuda.CUDAGraph()
        self.body.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self.body(static)
        self.graphs[key] = (static, graph)
        graph.replay()  # the capture only recorded the step: run it


def make_step(mode: str, model: torch.nn.Module, step_fn: MethodStep, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, totals: StepTotals, ctx: dist_utils.DistContext,
              accumulate: int, steps_per_epoch: int,
              on_bad: Callable[[Batch, StepResult], None]) -> TrainStep:
    """The step object of a resolved `mode` (`resolve_step_mode`): eager, sync_free or graphed."""
    if mode == "eager":
        return EagerStep(model, step_fn, optimizer, scaler, totals, ctx, accumulate,
                         steps_per_epoch, on_bad)
    body = SyncFreeStep(model, step_fn, optimizer, totals)
    return GraphedStep(body) if mode == "graphed" else body

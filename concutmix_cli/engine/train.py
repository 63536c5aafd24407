"""The training loop, readable top to bottom: config -> data -> model -> epochs of steps ->
evaluation -> checkpoint. One loop serves every method; `MethodStep` decides what a step computes.

Library code: no printing, no signal handlers, no global RNG seeding. What happens is sent as
events (events.py) to the caller's callbacks; a stop is asked for through a `StopFlag`. The CLI
(cli.py) renders the events and owns the signals.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from concutmix_cli import __version__
from concutmix_cli.config import Config, build_config, upgrade_saved_config
from concutmix_cli.data.batch import Batch
from concutmix_cli.data.loader import (DeviceBatches, EvalBatches, LoaderBatches, resolve_augment_on,
                                       view_size)
from concutmix_cli.data.prepared import PreparedData, load_prepared
from concutmix_cli.data.sampling import EpochPlanner
from concutmix_cli.engine import distributed as dist_utils
from concutmix_cli.engine import resume, runtime
from concutmix_cli.engine.checkpoint import RunFolder, read_state, state_bytes, weights_bytes
from concutmix_cli.engine.evaluate import accuracy_report, non_finite_note, predict_sharded
from concutmix_cli.engine.runlock import RunLock
from concutmix_cli.engine.step import MethodStep
from concutmix_cli.engine.syncfree import (COUNT_KEYS, SUM_KEYS, GraphedStep, StepTotals,
                                           SyncFreeStep, build_sgd, resolve_step_mode, set_lr)
from concutmix_cli.errors import UserError
from concutmix_cli.events import Callback, EpochDone, EpochStarted, Message, StepDone, StopFlag, emitter
from concutmix_cli.fileio import atomic_write_bytes, atomic_write_text
from concutmix_cli.methods import method as method_of
from concutmix_cli.models.build import build_model

STOP_EXIT_CODE = 143
"""The exit code of a stop that did not say its own (SIGTERM's)."""


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StopRequested(Exception):
    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


@dataclass
class TrainRequest:
    preset: str | None = None
    out: Path | None = None
    resume: Path | None = None
    overrides: list[str] = field(default_factory=list)
    shortcuts: dict[str, Any] = field(default_factory=dict)


def lr_at(epoch: int, cfg: Config) -> float:
    """Per-epoch learning rate of the 0-based `epoch`, the reference's `adjust_lr`: linear warm-up
    `lr * (e + 1) / w`, then step decay, or the cosine
    `lr * 0.5 * (1 + cos(pi * (e - w + 1) / (E - w + 1)))`, which is already below lr at its first
    epoch (0.09997 at epoch 0 of a 90-epoch run at lr 0.1) and never reaches 0."""
    optim = cfg.optim
    if epoch < optim.warmup_epochs:
        return optim.lr * (epoch + 1) / optim.warmup_epochs
    if optim.schedule == "cosine":
        w = optim.warmup_epochs
        progress = (epoch - w + 1) / (optim.epochs - w + 1)
        return optim.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.lr * optim.gamma ** sum(epoch >= m for m in optim.milestones)


def check_config_against_data(cfg: Config, data: PreparedData) -> None:
    if method_of(cfg.method.name).rectifies and cfg.method.top_k > data.num_classes:
        raise UserError(
            f"method.top_k = {cfg.method.top_k} exceeds the {data.num_classes} classes of "
            f"{data.folder}; set method.top_k to {data.num_classes} or less"
        )
    if cfg.data.augment_on == "device" and not data.is_arrays:
        raise UserError("data.augment_on = 'device' needs an in-memory dataset (CIFAR, synthetic)")


def resolve_request(request: TrainRequest) -> tuple[Config, RunFolder, bool]:
    """The config and run folder of a new run or of a resumed one."""
    if request.resume is not None:
        run = RunFolder(request.resume)
        if request.out is not None and os.path.realpath(request.out) != os.path.realpath(run.path):
            raise UserError(f"--out {request.out} with --resume {run.path}: a resumed run continues "
                            "in its own folder; drop --out (or copy the run folder to "
                            f"{request.out} and resume that copy)")
        if not run.config_path.is_file():
            raise UserError(f"--resume {run.path}: no config.json there; not a run folder")
        import json

        try:
            saved = json.loads(run.config_path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:  # bad JSON, not UTF-8, not an object
            raise UserError(f"{run.config_path}: unreadable ({err}); not a run's config") from None
        if request.preset is not None:
            raise UserError("--resume reads the run's own config; do not pass --preset with it")
        cfg = build_config(base=upgrade_saved_config(saved), overrides=request.overrides,
                           shortcuts=request.shortcuts)
        return cfg, run, True
    cfg = build_config(preset=request.preset or "smoke", overrides=request.overrides,
                       shortcuts=request.shortcuts)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg, RunFolder(request.out or Path("runs") / f"{cfg.preset}-{stamp}"), False


class Trainer:
    """Everything one run trains with. `data`: an already loaded dataset (else `cfg.data.path`
    is loaded); `on_event`: receives the run's events; `stop`: checked at safe points."""

    def __init__(self, cfg: Config, run: RunFolder, ctx: dist_utils.DistContext | None = None, *,
                 data: PreparedData | None = None, on_event: Callback | None = None,
                 stop: StopFlag | None = None, fresh: bool = True):
        self.cfg = cfg
        self.run = run
        self.fresh = fresh
        self.emit = on_event or (lambda event: None)
        self.stop = stop or StopFlag()
        self.ctx = ctx or dist_utils.DistContext()
        rt = cfg.runtime
        self.device = runtime.resolve_device(rt.device, self.ctx.local_rank)
        self.precision = runtime.resolve_precision(rt, self.device)
        self.channels_last = runtime.use_channels_last(rt, self.device, self.precision)
        runtime.set_deterministic(rt.deterministic)

        self.data = data if data is not None else load_prepared(cfg.data.path)
        check_config_against_data(cfg, self.data)
        self.augment_on = resolve_augment_on(cfg.data.augment_on, self.data, cfg.data.views)
        self.class_counts = torch.tensor(self.data.train_counts, dtype=torch.float32)
        self.method = method_of(cfg.method.name)
        self.planner = EpochPlanner(
            self.data.train.labels, seed=rt.seed, batch_size=cfg.optim.batch_size,
            foreground=self.method.foreground, mix_prob=cfg.method.cutmix_prob,
            mix_beta=cfg.method.cutmix_beta, rank=self.ctx.rank, world_size=self.ctx.world_size,
            max_steps=rt.max_steps_per_epoch, drop_last=cfg.optim.drop_last,
            view_size=view_size(self.data, cfg.data.views, self.augment_on),
        )
        if cfg.optim.batch_size > len(self.data.train):  # a mistake, partial batch or not
            raise UserError(f"optim.batch_size {cfg.optim.batch_size} is larger than the "
                            f"{len(self.data.train)} training images")

        with torch.random.fork_rng(devices=[]):  # the run's seed, the caller's RNG untouched
            torch.manual_seed(rt.seed)
            self.model = build_model(cfg.model, self.data.num_classes)
        if fresh and cfg.model.pretrained:  # a resumed run loads its own weights instead
            from concutmix_cli.models.pretrained import init_pretrained

            loaded = init_pretrained(self.model.backbone, cfg.model.arch, cfg.model.pretrained)
            self.emit(Message(f"backbone initialized from {loaded}"))
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = self._wrap_distributed(self.model)
        self.optimizer, self.lr = build_sgd(self.model.parameters(), cfg.optim, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_grad_scaler)
        self.step_mode = resolve_step_mode(rt.step, self.device, self.ctx.enabled,
                                           cfg.optim.accumulate, self.precision.use_grad_scaler)
        self.step_fn = MethodStep(cfg.method, self.class_counts, self.ctx,
                                  self.precision.autocast_dtype, self.channels_last, self.device,
                                  autocast_cache=self.step_mode != "graphed")
        self.totals = StepTotals(self.device)
        self._fast_step = None  # made at the first step, after a resume has loaded the optimizer
        self._bad_seen = 0
        contrast = self.method.contrast
        if self.augment_on == "device":
            self.batches = DeviceBatches(self.data, self.planner, contrast, self.device,
                                         cfg.data.prefetch, cfg.data.epoch_views)
        else:
            self.batches = LoaderBatches(self.data, self.planner, cfg.data.views, contrast,
                                         cfg.data.num_workers, self.device)
        self.start_epoch, self.start_step = 0, 0
        self.partial: dict[str, float] = {}
        self.best_val: float | None = None
        self.bad_steps = 0

    def _wrap_distributed(self, model):
        # DDP under torchrun (optional SyncBatchNorm); ce/cutmix leave the two heads unused.
        self.model, wrapped = dist_utils.wrap_model(
            model, self.ctx, self.device, sync_batchnorm=self.cfg.model.sync_batchnorm,
            find_unused_parameters=not self.method.contrast)
        return wrapped

    # ------------------------------------------------------------------ checkpoints

    def _metadata(self, epoch: int) -> dict[str, Any]:
        return {
            "config": self.cfg.model_dump(), "epoch": epoch, "num_classes": self.data.num_classes,
            "classes": self.data.classes, "arch": self.cfg.model.arch,
            "data_checksum": self.data.manifest.get("checksum"),
            "preprocess": self.data.preprocess(self.cfg.data.views),
        }

    def _state(self, epoch: int, step: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "step": step, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": runtime.rng_state(), "partial": dict(self.partial),
            "best_val": self.best_val, "bad_steps": self.bad_steps,
            "toolkit_version": __version__,
        }

    def save_checkpoint(self, epoch: int, step: int = 0) -> None:
        """epoch = epochs fully done (step 0), or the epoch in progress with `step` steps done."""
        self._check_weights_finite(epoch, step)
        if not self.ctx.is_main:
            return
        self.run.save_checkpoint(
            epoch, step, weights_bytes(self.model.state_dict(), self._metadata(epoch)),
            state_bytes(self._state(epoch, step)), keep=self.cfg.runtime.keep,
        )

    def _check_weights_finite(self, epoch: int, step: int = 0) -> None:
        """Never save NaN/inf weights over the last good checkpoint (a finite loss can still give
        an update that overflows)."""
        bad = next((name for name, t in self.model.state_dict().items()
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            where = f"end of epoch {epoch}" if not step else f"epoch {epoch + 1}, step {step}"
            raise NonFiniteLoss(
                f"{where}: non-finite weights ({bad}) after the update; stopped without saving "
                f"({self._what_is_kept()}). Lower the learning rate"
            )

    def _what_is_kept(self) -> str:
        """For a stop message: only claim a last good checkpoint when one exists."""
        if self.run.read_index(strict=False):
            return f"last good checkpoint kept in {self.run.path}"
        if self.fresh:  # `run` removes the new folder: the same command can be run again
            return f"no checkpoint was saved yet: the new run folder {self.run.path} is removed"
        return f"no checkpoint was saved yet: {self.run.path} has nothing to resume from"

    def restore(self) -> None:
        if self.ctx.is_main:  # what a killed process was writing when it died
            for leftover in self.run.remove_temporaries():
                self.emit(Message(f"removed an unfinished write: {leftover}"))
            for note in self.run.recover_index():  # a lost index: never start over on top
                self.emit(Message(note, "note"))
        dist_utils.barrier(self.ctx)
        entry, notes = self.run.newest_intact()
        if dist_utils.any_rank(dist_utils.broadcast_object(entry, self.ctx) != entry, self.ctx):
            raise UserError(f"{self.run.path}: the processes do not all see rank 0's checkpoint; "
                            "the run folder must be on a filesystem that every node shares")
        for note in notes:
            self.emit(Message(note, "skipping checkpoint"))
        if entry is None:
            if notes:
                raise UserError(f"{self.run.path}: no intact checkpoint to resume from "
                                f"({'; '.join(notes)}); start a new run with --out")
            if self.ctx.is_main:  # rows of epochs that were never checkpointed are redone
                self.run.truncate_metrics(0)
            self.emit(Message("no checkpoint yet: starting from the beginning"))
            return
        from concutmix_cli.engine.checkpoint import read_weights

        weights_path = self.run.path / entry["weights"]
        tensors, meta = read_weights(weights_path)
        if (meta.get("arch"), meta.get("num_classes")) != (self.cfg.model.arch,
                                                           self.data.num_classes):
            raise UserError(
                f"{weights_path}: a {meta.get('arch')} with {meta.get('num_classes')} classes "
                f"cannot continue as a {self.cfg.model.arch} on {self.data.folder} "
                f"({self.data.num_classes} classes); resume with the run's own model and data"
            )
        state = read_state(self.run.path / entry["state"])
        try:
            self.model.load_state_dict(tensors)
            kernels = [{k: g[k] for k in ("fused", "foreach")} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            for group, flags in zip(self.optimizer.param_groups, kernels):
                group.update(flags)  # a state saved by unfused SGD (0.2 and older) stays fused
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"{weights_path}: does not fit the configured model "
                            f"({str(err).strip().splitlines()[0]}); resume with the run's own "
                            f"config") from None
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        runtime.set_rng_state(state["rng"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step"])
        self.partial = dict(state.get("partial") or {})
        self.best_val = state.get("best_val")
        self.bad_steps = int(state.get("bad_steps", 0))
        if self.ctx.is_main:
            self.run.truncate_metrics(self.start_epoch)
            self.run.sync_last(entry)  # last.safetensors may be newer than the index, or damaged
            missing = sorted(set(range(1, self.start_epoch + 1))
                             - {r.get("epoch") for r in self.run.read_metrics()})
            if missing:  # a cut or lost line: the checkpoint is past it, the rows cannot be redone
                shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
                self.emit(Message(
                    f"{self.run.metrics_path} has no row for epoch(s) {shown} (a line was lost "
                    f"or cut); the run continues from its epoch-{self.start_epoch} checkpoint, so "
                    "those epochs stay without metrics", "note"))
        where = f"epoch {self.start_epoch + 1}" + (f", step {self.start_step}" if self.start_step else "")
        fallback = f" (the newest intact checkpoint, {entry['weights']})" if notes else ""
        self.emit(Message(f"resuming {self.run.path} at {where}{fallback}"))

    # ------------------------------------------------------------------ the loop

    def train_step(self, batch: Batch):
        """The eager step: loss, a host check that it is finite, backward and, at an accumulation
        boundary, the optimizer step of one batch.

        Returns (result, scaler_skipped); result is None when the loss was not finite and the batch
        was dropped (or the run stops, see `runtime.max_bad_steps`)."""
        step = batch.step
        result = self.step_fn(self.train_model, batch, batch.epoch)
        # all ranks skip together: one rank leaving DDP's all-reduce would hang the others
        if dist_utils.any_rank(not bool(torch.isfinite(result.loss)), self.ctx):
            self._non_finite(batch.epoch, step, result)
            self.optimizer.zero_grad(set_to_none=True)
            return None, False
        self.scaler.scale(result.loss / self.cfg.optim.accumulate).backward()
        if self.ends_accumulation(step):
            return result, self.optimizer_step()
        return result, False

    def run_step(self, batch: Batch) -> None:
        """One batch exactly as the loop trains it, its sums and counts added to `self.totals`
        (benchmarks/throughput.py times exactly this)."""
        if self.step_mode == "eager":
            result, scaler_skipped = self.train_step(batch)
            if result is not None:
                self.totals.add(result, batch)
                self.totals.add_skipped(scaler_skipped)
            return
        if self._fast_step is None:
            body = SyncFreeStep(self.train_model, self.step_fn, self.optimizer)
            self._fast_step = (GraphedStep(body, self.totals) if self.step_mode == "graphed"
                               else lambda b: body(b, self.totals))
        self._fast_step(batch)

    def ends_accumulation(self, step: int) -> bool:
        """Whether the optimizer steps after this step (every `accumulate` steps and at epoch end)."""
        return (step + 1) % self.cfg.optim.accumulate == 0 or step + 1 == self.planner.steps_per_epoch()

    def optimizer_step(self) -> bool:
        """Unscale, step and zero the gradients; True when the fp16 grad scaler skipped the step."""
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return scale_before is not None and self.scaler.get_scale() < scale_before

    def _stop_requested(self) -> bool:
        """Whether any process was asked to stop (all stop together)."""
        return dist_utils.any_rank(self.stop.requested, self.ctx)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        model = self.train_model
        model.train()
        lr = lr_at(epoch, cfg)
        set_lr(self.optimizer, self.lr, lr)  # in place: a captured step reads the same tensor
        steps = self.planner.steps_per_epoch()
        start_step = self.start_step if epoch == self.start_epoch else 0
        # A mid-epoch resume continues the saved float32 running sums (a float32 survives the
        # round trip through float64 exactly), so the epoch's metrics are bit-identical. The
        # saved sums are the total over all processes: rank 0 alone continues them.
        restored = self.partial if start_step and self.ctx.is_main else {}
        self.totals.reset(restored)
        self._bad_seen = int(restored.get("bad", 0))
        report = self.ctx.is_main
        if report:
            self.emit(EpochStarted(epoch, cfg.optim.epochs, steps, start_step))
        started = time.perf_counter()
        seen = 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.batches.epoch(epoch, start_step):
            step = batch.step
            self.run_step(batch)
            seen += batch.size
            if step % 5 == 0 or step + 1 == steps:  # a host sync: every 5 steps only
                self._check_device_bad_steps(epoch, step)
                if report:
                    elapsed = time.perf_counter() - started
                    self.emit(StepDone(epoch, cfg.optim.epochs, step, steps, self.totals.mean_loss(),
                                       lr, seen * self.ctx.world_size / max(elapsed, 1e-9)))
            # stop together, and only after an optimizer step: the gradients accumulated since
            # the last one are not saved, so stopping between would not resume exactly
            if self.ends_accumulation(step) and self._stop_requested():
                self._check_device_bad_steps(epoch, step)
                self.partial = self._epoch_totals(time.perf_counter() - started, restored)
                self.save_checkpoint(epoch, step + 1)
                raise StopRequested(self.stop.exit_code or STOP_EXIT_CODE)
        self._check_device_bad_steps(epoch, steps - 1)
        totals = self._epoch_totals(time.perf_counter() - started, restored)
        samples = max(totals["samples"], 1)
        world = self.ctx.world_size
        return {
            "lr": lr,
            "loss": totals["loss"] / samples,
            "loss_cls": totals["cls"] / samples,
            "loss_bcl": totals["bcl"] / samples if self.method.contrast else None,
            "train_acc": totals["correct"] / samples,
            "rect_weight": (totals["rect_weight"] / totals["rectified"]) if totals["rectified"] else None,
            "mixed_steps": int(totals["mixed"] / world),
            "steps": int(totals["steps"] / world),
            "skipped_steps": int(totals["skipped"] / world),
            "seconds": totals["seconds"] / world,
            "samples_per_s": totals["samples"] / max(totals["seconds"] / world, 1e-9),
        }

    def _epoch_totals(self, seconds: float, restored: dict[str, float]) -> dict[str, float]:
        """The epoch's totals so far over all processes (`_PARTIAL_KEYS`): the device sums and
        counts (which already continue a restored state) and the wall-clock seconds, including
        those of the process that trained the epoch's first part."""
        now = {**self.totals.read(), "seconds": seconds + float(restored.get("seconds", 0.0))}
        reduced = torch.tensor([now[k] for k in _PARTIAL_KEYS], dtype=torch.float64, device=self.device)
        return dict(zip(_PARTIAL_KEYS, dist_utils.all_reduce_sum(reduced, self.ctx).tolist()))

    def _check_device_bad_steps(self, epoch: int, step: int) -> None:
        """The sync-free steps skip a non-finite loss on the device and count it; at each logging
        point the count is read, reported, and the run stops past `runtime.max_bad_steps` (the
        eager step does this at once, `_non_finite`)."""
        if self.step_mode == "eager":
            return
        bad = int(self.totals.counts["bad"])
        if bad == self._bad_seen:
            return
        new, self._bad_seen = bad - self._bad_seen, bad
        self._count_bad_steps(new, f"epoch {epoch + 1}, by step {step + 1}: {new} non-finite "
                                   "loss(es) skipped")

    def _non_finite(self, epoch: int, step: int, result) -> None:
        bad = [k for k, v in result.terms.items() if not torch.isfinite(v)] or ["loss"]
        self._count_bad_steps(1, f"epoch {epoch + 1}, step {step + 1}: non-finite "
                                 f"{'/'.join(bad)} loss")

    def _count_bad_steps(self, new: int, where: str) -> None:
        """Count dropped steps; stop past `runtime.max_bad_steps`, else say so."""
        self.bad_steps += new
        if self.bad_steps > self.cfg.runtime.max_bad_steps:
            raise NonFiniteLoss(
                f"{where}; stopped ({self._what_is_kept()}). Lower the "
                f"learning rate, or allow skipping with --set runtime.max_bad_steps=N"
            )
        self.emit(Message(f"{where} ({self.bad_steps}/{self.cfg.runtime.max_bad_steps})",
                          "skipping batch"))

    def evaluate(self, split: str) -> dict[str, Any] | None:
        if getattr(self.data, split) is None:
            return None
        batches = EvalBatches(self.data, split, self.cfg.data.views,
                              self.cfg.data.eval_batch_size, self.device)
        # Under torchrun each rank predicts its share of the batches; all ranks get them all back.
        probs, labels = predict_sharded(self.model, batches, self.device, self.ctx,
                                        self.precision.autocast_dtype, self.channels_last)
        return accuracy_report(probs, labels, self.data.manifest["shot_groups"])

    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        rows = []
        try:
            if self._stop_requested():  # asked during setup: nothing trained, nothing to save
                raise StopRequested(self.stop.exit_code or STOP_EXIT_CODE)
            for epoch in range(self.start_epoch, cfg.optim.epochs):
                row = self.train_epoch(epoch)
                self.partial = {}
                test, val = self.evaluate("test"), self.evaluate("val")
                row = {"epoch": epoch + 1, **row}
                for prefix, report in (("test", test), ("val", val)):
                    if report is not None:
                        row.update(_report_columns(prefix, report))
                        note = non_finite_note(report, prefix)
                        if note and self.ctx.is_main:
                            self.emit(Message(f"epoch {epoch + 1}: {note}", "warning"))
                row["bad_steps"] = self.bad_steps
                self._check_weights_finite(epoch + 1)  # before the metrics row is written
                if self.ctx.is_main:
                    self._end_of_epoch(epoch, row, val)
                rows.append(row)
                dist_utils.barrier(self.ctx)
                # a signal during evaluation or the checkpoint: stop at this epoch boundary
                if epoch + 1 < cfg.optim.epochs and self._stop_requested():
                    raise StopRequested(self.stop.exit_code or STOP_EXIT_CODE)
        finally:
            self.batches.close()  # however training ends, no worker outlives it
        return rows

    def _end_of_epoch(self, epoch: int, row: dict[str, Any], val: dict[str, Any] | None) -> None:
        self.run.append_metrics(row)
        if val is not None and (self.best_val is None or val["overall"] > self.best_val):
            self.best_val = val["overall"]
            self.run.write_best(  # its sha256 goes into the index with the checkpoint below
                weights_bytes(self.model.state_dict(), self._metadata(epoch + 1)))
        self.save_checkpoint(epoch + 1)
        self.emit(EpochDone(epoch, row, _summary_line(row, self.cfg.optim.epochs)))


_PARTIAL_KEYS = (*SUM_KEYS, *COUNT_KEYS, "seconds")
"""What a mid-epoch checkpoint saves of the epoch so far (`StepTotals` and the seconds)."""


def _fmt(value, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _summary_line(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  lr {row['lr']:.4f}  "
            f"train {_fmt(row['train_acc'])}%")
    if "test_top1" in row:
        text += (f"  test {_fmt(row['test_top1'])}% (many {_fmt(row['test_many'])} / medium "
                 f"{_fmt(row['test_medium'])} / few {_fmt(row['test_few'])})")
    if row.get("rect_weight") is not None:
        text += f"  omega*rho {row['rect_weight']:.2e}"
    return text + f"  {row['seconds']:.1f}s {row['samples_per_s']:.0f} img/s"


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the run folder, the metrics rows of the epochs trained now, and whether
    it stopped early on request (then `exit_code` says why and the run can be resumed)."""

    run_dir: Path
    rows: list[dict[str, Any]]
    stopped: bool = False
    exit_code: int = 0


def run(cfg: Config, run: RunFolder, resuming: bool, *, data: PreparedData | None = None,
        callbacks: Callback | list[Callback] | None = None,
        stop: StopFlag | None = None, check_run_data: bool = True) -> TrainResult:
    """Train `cfg` into `run` (a new folder, or the run to resume), under torchrun too.
    `check_run_data`: on resume, check that the run's own data is still where it was."""
    emit = emitter(callbacks)
    if cfg.runtime.tensorboard:  # a missing extra: one line before anything is written
        from concutmix_cli.tensorboard import require_summary_writer

        require_summary_writer()
    if resuming and data is None and check_run_data:
        resume.check_run_data(cfg.data.path, str(run.config_path), resume.recorded_checksum(run.path))
    if data is None:
        resume.absolute_data_path(cfg)
    else:  # the config (saved in the run) names the data the run trains on
        cfg = cfg.model_copy(deep=True)
        cfg.data.path = str(Path(data.folder).resolve())
    ctx = dist_utils.init_from_env(cfg.runtime.device)
    if not ctx.is_main:
        emit = emitter(None)
    lock = RunLock(run.path)  # one writer per run folder (rank 0 holds it for the job)
    board = None
    try:
        if not resuming:  # rank 0 creates the folder; every rank then uses rank 0's path
            def create() -> str:
                run.create()
                _note(emit, lock.acquire())
                run.check_new()  # another `train --out` may have taken the folder meanwhile
                atomic_write_text(run.config_path, cfg.to_json())
                return str(run.path)

            run = RunFolder(Path(dist_utils.main_first(create, ctx)))
        elif ctx.is_main:
            _note(emit, lock.acquire())
        if resuming:
            check_resume_target(run, cfg, run.read_index(strict=False))  # before any write
        emit, board = _with_tensorboard(emit, cfg, run, ctx)
        try:
            trainer = Trainer(cfg, run, ctx, data=data, on_event=emit, stop=stop,
                              fresh=not resuming)
        except BaseException:
            if ctx.is_main and not resuming:  # bad data or config: leave no empty run behind
                lock.release()
                run.discard_new()
            raise
        if resuming:  # checks model and data against the checkpoint before anything is written
            _resume_notes(emit, run, cfg, trainer)
            trainer.restore()
            check_resume_target(run, cfg, [{"epoch": trainer.start_epoch}])
            if trainer.start_epoch >= cfg.optim.epochs:
                emit(Message(f"{run.path} already finished its {trainer.start_epoch} epoch(s): "
                             "nothing to train (extend it with more optim.epochs)"))
        if ctx.is_main and not (resuming and trainer.start_epoch >= cfg.optim.epochs):
            atomic_write_bytes(run.path / "manifest.json",
                               (trainer.data.folder / "manifest.json").read_bytes())
            if resuming:  # what the run now continues with (the changes were said above)
                atomic_write_text(run.config_path, cfg.to_json())
        if not resuming:
            emit(Message(f"training {cfg.method.name} ({cfg.preset}) on {trainer.data.folder} "
                         f"-> {run.path}  ({trainer.device.type}, {trainer.precision.name})"))
        try:
            rows = trainer.fit()
        except StopRequested as stopped:
            return TrainResult(run.path, [], stopped=True, exit_code=stopped.exit_code)
        except Exception:
            if ctx.is_main and not resuming:  # failed before its first checkpoint: nothing kept,
                if board is not None:         # so the same command can be run again
                    board.close()
                    board = None
                lock.release()
                run.discard_new()
            raise
        return TrainResult(run.path, rows)
    finally:
        if board is not None:
            board.close()
        lock.release()
        dist_utils.shutdown()


def check_resume_target(run: RunFolder, cfg: Config, entries: list[dict[str, Any]]) -> None:
    """A resume may extend a run (more optim.epochs) or set a new, nearer target, but never
    one before the epochs it has trained: config.json would then say fewer epochs than its
    metrics hold ("2 of 1 epochs"). Refused before anything is written."""
    done = max((int(e.get("epoch", 0)) for e in entries), default=0)
    if cfg.optim.epochs < done:
        raise UserError(
            f"--resume {run.path}: the run has trained {done} epoch(s), so optim.epochs = "
            f"{cfg.optim.epochs} (--epochs) would end it before where it is; nothing was changed: "
            f"give at least {done} epochs (more extends it), or train a new run with --out"
        )


def _with_tensorboard(emit: Callback, cfg: Config, run: RunFolder, ctx):
    """`emit` plus, with runtime.tensorboard on rank 0, a TensorBoard log of the events."""
    if not (cfg.runtime.tensorboard and ctx.is_main):
        return emit, None
    from concutmix_cli.tensorboard import TensorBoardLog

    board = TensorBoardLog(run.path)
    return emitter([emit, board]), board


EVAL_COLUMNS = {"overall": "top1", "many": "many", "medium": "medium", "few": "few", "ece": "ece",
                "balanced_accuracy": "balanced_accuracy", "macro_f1": "macro_f1",
                "non_finite_outputs": "non_finite"}
"""metrics.jsonl columns of an evaluation report: `test_top1`, ..., `val_macro_f1`."""


def _report_columns(prefix: str, report: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{column}": report[key] for key, column in EVAL_COLUMNS.items()}


def run_training(request: TrainRequest, callbacks: Callback | list[Callback] | None = None,
                 stop: StopFlag | None = None) -> TrainResult:
    """`concutmix train` (and torchrun): the request's config and folder, then `run`."""
    cfg, folder, resuming = resolve_request(request)
    return run(cfg, folder, resuming, callbacks=callbacks, stop=stop,
               check_run_data=not _names_data(request))


def _names_data(request: TrainRequest) -> bool:
    """Whether the command line chose the data (--data or --set data.path=...)."""
    return request.shortcuts.get("data.path") is not None or any(
        o.split("=", 1)[0].strip() == "data.path" for o in request.overrides)


def _note(emit: Callback, note: str | None) -> None:
    if note:
        emit(Message(note, "note"))


def _resume_notes(emit: Callback, run: RunFolder, cfg: Config, trainer: Trainer) -> None:
    """Say what a resume changes: other settings than the run's, other data."""
    import json

    try:
        saved = json.loads(run.config_path.read_text())
    except (OSError, ValueError):
        saved = {}
    changes = resume.changed_settings(saved if isinstance(saved, dict) else {}, cfg)
    if changes:
        emit(Message(f"resuming with changed settings ({'; '.join(changes)}); "
                     "the run continues validly but will not equal an uninterrupted one", "note"))
    _note(emit, resume.other_data_note(resume.recorded_checksum(run.path),
                                          trainer.data.manifest.get("checksum"),
                                          trainer.data.folder))

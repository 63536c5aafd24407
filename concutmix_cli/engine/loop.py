"""The training loop, readable top to bottom: epochs of steps -> evaluation -> checkpoint.

One loop serves every method and every step mode: the run's parts (data, model, optimizer, the
step object) are built by engine/parts.py, the step object (engine/steps.py) trains on a batch,
and `MethodStep` (engine/step.py) decides what a step computes. Library code: no printing, no
signal handlers, no global RNG seeding; what happens is sent as events (events.py), and a stop
is asked for through a `StopFlag`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from concutmix_cli import __version__
from concutmix_cli.config import Config
from concutmix_cli.data.batch import Batch
from concutmix_cli.data.loader import EvalBatches
from concutmix_cli.data.prepared import PreparedData
from concutmix_cli.engine import distributed as dist_utils
from concutmix_cli.engine import runtime
from concutmix_cli.engine.checkpoint import RunFolder, read_state, read_weights, state_bytes, weights_bytes
from concutmix_cli.engine.evaluate import accuracy_report, non_finite_note, predict_sharded
from concutmix_cli.engine.parts import build_parts
from concutmix_cli.engine.steps import COUNT_KEYS, SUM_KEYS, ends_accumulation, set_lr
from concutmix_cli.errors import UserError
from concutmix_cli.events import Callback, EpochDone, EpochStarted, Message, StepDone, StopFlag

STOP_EXIT_CODE = 143
"""The exit code of a stop that did not say its own (SIGTERM's)."""


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StopRequested(Exception):
    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


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


class Trainer:
    """The loop over a run's parts (`parts.build_parts`): epochs of steps, evaluation,
    checkpoints, resume. `data`: an already loaded dataset (else `cfg.data.path` is loaded);
    `on_event`: receives the run's events; `stop`: checked at safe points."""

    def __init__(self, cfg: Config, run: RunFolder, ctx: dist_utils.DistContext | None = None, *,
                 data: PreparedData | None = None, on_event: Callback | None = None,
                 stop: StopFlag | None = None, fresh: bool = True):
        self.cfg = cfg
        self.run = run
        self.fresh = fresh
        self.emit = on_event or (lambda event: None)
        self.stop = stop or StopFlag()
        self.ctx = ctx or dist_utils.DistContext()
        self.parts = build_parts(cfg, self.ctx, data=data, fresh=fresh, emit=self.emit,
                                 on_bad=self._non_finite)
        parts = self.parts  # the names the loop reads
        self.device, self.precision, self.data = parts.device, parts.precision, parts.data
        self.channels_last = parts.channels_last
        self.method, self.planner, self.batches = parts.method, parts.planner, parts.batches
        self.model, self.train_model = parts.model, parts.train_model
        self.optimizer, self.lr, self.scaler = parts.optimizer, parts.lr, parts.scaler
        self.step, self.totals, self.step_mode = parts.step, parts.totals, parts.step_mode
        self._bad_seen = 0
        self.start_epoch, self.start_step = 0, 0
        self.partial: dict[str, float] = {}
        self.best_val: float | None = None
        self.bad_steps = 0

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
                group.update(flags)  # a state saved by unfused SGD (a float lr) stays fused
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

    def ends_accumulation(self, step: int) -> bool:
        return ends_accumulation(step, self.cfg.optim.accumulate, self.planner.steps_per_epoch())

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
            self.step(batch)
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

    def _non_finite(self, batch: Batch, result) -> None:
        """The eager step dropped `batch` (a non-finite loss): count it, stop past the limit."""
        bad = [k for k, v in result.terms.items() if not torch.isfinite(v)] or ["loss"]
        self._count_bad_steps(1, f"epoch {batch.epoch + 1}, step {batch.step + 1}: non-finite "
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
                started = time.perf_counter()
                test, val = self.evaluate("test"), self.evaluate("val")
                row = {"epoch": epoch + 1, **row, "eval_seconds": time.perf_counter() - started}
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


EVAL_COLUMNS = {"overall": "top1", "many": "many", "medium": "medium", "few": "few", "ece": "ece",
                "balanced_accuracy": "balanced_accuracy", "macro_f1": "macro_f1",
                "non_finite_outputs": "non_finite"}
"""metrics.jsonl columns of an evaluation report: `test_top1`, ..., `val_macro_f1`."""


def _report_columns(prefix: str, report: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{column}": report[key] for key, column in EVAL_COLUMNS.items()}



"""A run's parts, built once from its config: data, planner, model, optimizer, step and batches.

Building is kept apart from the loop that uses the parts (engine/loop.py), as torchvision's
reference `main` builds its model, criterion, optimizer and loaders before `train_one_epoch`:
the loop reads top to bottom, and a benchmark or test can build the parts and drive a step
itself. Nothing here trains or writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from concutmix_cli.config import Config
from concutmix_cli.data.batch import Batch
from concutmix_cli.data.loader import DeviceBatches, LoaderBatches, resolve_augment_on, view_size
from concutmix_cli.data.prepared import PreparedData, load_prepared
from concutmix_cli.data.sampling import EpochPlanner
from concutmix_cli.engine import distributed as dist_utils
from concutmix_cli.engine import runtime
from concutmix_cli.engine.step import MethodStep, StepResult
from concutmix_cli.engine.steps import StepTotals, TrainStep, build_sgd, make_step, resolve_step_mode
from concutmix_cli.errors import UserError
from concutmix_cli.events import Callback, Message
from concutmix_cli.methods import Method
from concutmix_cli.methods import method as method_of
from concutmix_cli.mixing import CutMix
from concutmix_cli.models.build import build_model


@dataclass
class RunParts:
    """Everything one run trains with (one process's share under torchrun)."""

    cfg: Config
    ctx: dist_utils.DistContext
    device: torch.device
    precision: runtime.Precision
    channels_last: bool
    data: PreparedData
    augment_on: str
    """Where the training views are made: 'loader' or 'device' (data.augment_on resolved)."""
    method: Method
    """The method's row of the table (methods.py)."""
    planner: EpochPlanner
    model: torch.nn.Module
    """The network itself (saved, evaluated)."""
    train_model: torch.nn.Module
    """What the step calls: `model`, or its DDP wrapper under torchrun."""
    optimizer: torch.optim.Optimizer
    lr: torch.Tensor
    """The learning rate as a device tensor (`steps.set_lr` changes it in place)."""
    scaler: torch.amp.GradScaler
    step_mode: str
    totals: StepTotals
    step: TrainStep
    batches: DeviceBatches | LoaderBatches


def check_config_against_data(cfg: Config, data: PreparedData) -> None:
    if method_of(cfg.method.name).rectifies and cfg.method.top_k > data.num_classes:
        raise UserError(
            f"method.top_k = {cfg.method.top_k} exceeds the {data.num_classes} classes of "
            f"{data.folder}; set method.top_k to {data.num_classes} or less"
        )
    if cfg.data.augment_on == "device" and not data.is_arrays:
        raise UserError("data.augment_on = 'device' needs an in-memory dataset (CIFAR, synthetic)")
    if cfg.optim.batch_size > len(data.train):  # a mistake, partial batch or not
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} is larger than the "
                        f"{len(data.train)} training images")


def build_parts(cfg: Config, ctx: dist_utils.DistContext, *,
                on_bad: Callable[[Batch, StepResult], None], data: PreparedData | None = None,
                fresh: bool = True, emit: Callback = lambda event: None) -> RunParts:
    """The parts of a run of `cfg` on `data` (else `cfg.data.path` is loaded). `fresh`: a new
    run (a pretrained backbone is loaded; a resumed run loads its own weights later); `on_bad`:
    what the eager step calls on a non-finite loss (the loop counts it, and may stop)."""
    rt = cfg.runtime
    device = runtime.resolve_device(rt.device, ctx.local_rank)
    precision = runtime.resolve_precision(rt, device)
    channels_last = runtime.use_channels_last(rt, device, precision)
    runtime.set_deterministic(rt.deterministic)

    data = data if data is not None else load_prepared(cfg.data.path)
    check_config_against_data(cfg, data)
    augment_on = resolve_augment_on(cfg.data.augment_on, data, cfg.data.views)
    method = method_of(cfg.method.name)
    planner = EpochPlanner(
        data.train.labels, seed=rt.seed, batch_size=cfg.optim.batch_size,
        cutmix=CutMix.of_method(method, cfg.method, view_size(data, cfg.data.views, augment_on)),
        rank=ctx.rank, world_size=ctx.world_size, max_steps=rt.max_steps_per_epoch,
        drop_last=cfg.optim.drop_last,
    )

    with torch.random.fork_rng(devices=[]):  # the run's seed, the caller's RNG untouched
        torch.manual_seed(rt.seed)
        model = build_model(cfg.model, data.num_classes)
    if fresh and cfg.model.pretrained:
        from concutmix_cli.models.pretrained import init_pretrained

        loaded = init_pretrained(model.backbone, cfg.model.arch, cfg.model.pretrained)
        emit(Message(f"backbone initialized from {loaded}"))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # DDP under torchrun (optional SyncBatchNorm); methods without contrast leave two heads unused
    model, train_model = dist_utils.wrap_model(
        model, ctx, device, sync_batchnorm=cfg.model.sync_batchnorm,
        find_unused_parameters=not method.contrast)

    optimizer, lr = build_sgd(model.parameters(), cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    step_mode = resolve_step_mode(rt.step, device, ctx.enabled, cfg.optim.accumulate,
                                  precision.use_grad_scaler)
    step_fn = MethodStep(cfg.method, torch.tensor(data.train_counts, dtype=torch.float32), ctx,
                         precision.autocast_dtype, channels_last, device,
                         autocast_cache=step_mode != "graphed")
    totals = StepTotals(device)
    step = make_step(step_mode, train_model, step_fn, optimizer, scaler, totals, ctx,
                     cfg.optim.accumulate, planner.steps_per_epoch(), on_bad)
    if augment_on == "device":
        batches = DeviceBatches(data, planner, method.contrast, device, cfg.data.prefetch,
                                cfg.data.epoch_views)
    else:
        batches = LoaderBatches(data, planner, cfg.data.views, method.contrast,
                                cfg.data.num_workers, device)
    return RunParts(cfg=cfg, ctx=ctx, device=device, precision=precision,
                    channels_last=channels_last, data=data, augment_on=augment_on, method=method,
                    planner=planner, model=model, train_model=train_model, optimizer=optimizer, lr=lr, scaler=scaler,
                    step_mode=step_mode, totals=totals, step=step, batches=batches)

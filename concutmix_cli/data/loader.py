"""Turning step plans into `Batch`es of views, in one direction: planner -> views -> `Batch`.

Two paths make the same `Batch` (data/batch.py) from the same `BatchPlan`:
- the loader path (`LoaderBatches`): torchvision transforms on PIL images in DataLoader workers,
  one whole step per worker task;
- the device path (`DeviceBatches`): batched transforms on the training device.
Both yield `Batch`es already on the training device, carrying the step's mixing decision.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from concutmix_cli.data.batch import Batch
from concutmix_cli.data.prepared import PreparedData, Split
from concutmix_cli.data.sampling import BatchPlan, EpochPlanner
from concutmix_cli.data.views import eval_transform, training_views
from concutmix_cli.data.workers import LOADER_TIMEOUT_S, close, guarded

def resolve_augment_on(choice: str, data: PreparedData, views_kind: str) -> str:
    """`data.augment_on` for this data: auto is the device path for in-memory images with the
    CIFAR views (the only views it makes), the loader path otherwise."""
    if choice != "auto":
        return choice
    return "device" if data.train.images is not None and views_kind == "cifar" else "loader"


def view_size(data: PreparedData, views_kind: str, augment_on: str) -> int:
    """The side of view 0 in training (where the CutMix box is drawn): the device path keeps the
    images' size (CIFAR views); the loader path's views are `data.view_side(views_kind)`."""
    if augment_on == "device" and data.train.images is not None:
        return int(data.train.images.shape[-2])
    return data.view_side(views_kind)


def _split_images(split: Split, root):
    """Index -> PIL image, for in-memory arrays or list datasets (images read from root)."""
    if split.images is not None:
        return lambda index: Image.fromarray(split.images[index].numpy())
    from concutmix_cli.data.lists import ListImageDataset

    images = ListImageDataset(root, split.entries, transform=None)
    return lambda index: images[index][0]


def _plan_batch(plan: BatchPlan, device: torch.device | None = None, **views: torch.Tensor) -> Batch:
    """The views with the plan's mixing decision (the box moved to `device` when given)."""
    box = plan.box if plan.box is None or device is None else plan.box.to(device, non_blocking=True)
    return Batch(epoch=plan.epoch, step=plan.step, mixed=plan.mix, lam=plan.lam, box=box, **views)


class StepDataset(Dataset):
    """Maps a step's plan to its `Batch` (CPU), one sample after the other.

    Each sample's transforms draw from torch's RNG seeded with the plan's seed of that sample, so
    its views depend only on (run seed, epoch, step, position), never on worker count or order.
    """

    def __init__(self, data: PreparedData, views_kind: str, contrast: bool):
        self.split = data.train
        self.image = _split_images(data.train, data.root)
        self.views = training_views(views_kind, data.mean, data.std, data.view_side(views_kind))
        self.contrast = contrast
        self.labels = torch.from_numpy(data.train.labels)

    def __len__(self) -> int:
        return len(self.split)

    def _sample(self, index_a: int, index_b: int, seed: int) -> list[torch.Tensor]:
        """view 0 [, view 1, view 2] [, view 0 of B]: in this order from the seeded RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.image(index_a)
            views = [self.views.classify(image)]
            if self.contrast:
                views += [self.views.contrast(image), self.views.contrast(image)]
            if index_b >= 0:
                views.append(self.views.classify(self.image(index_b)))
        return views

    def __getitem__(self, plan: BatchPlan) -> Batch:
        fg = plan.foreground if plan.mix else np.full(len(plan.indices), -1)
        samples = [self._sample(int(a), int(b), int(s))
                   for a, b, s in zip(plan.indices, fg, plan.sample_seeds)]
        stacked = [torch.stack(v) for v in zip(*samples)]
        views = {"view0": stacked.pop(0), "labels": self.labels[torch.from_numpy(plan.indices)]}
        if self.contrast:
            views["view1"], views["view2"] = stacked.pop(0), stacked.pop(0)
        if plan.mix:
            views["fg_view0"] = stacked.pop(0)
            views["fg_labels"] = self.labels[torch.from_numpy(plan.foreground)]
        return _plan_batch(plan, **views)


class PlanSampler(Sampler):
    """Yields the plan of each step of the current epoch from `start_step` (one plan = one batch)."""

    def __init__(self, planner: EpochPlanner):
        self.planner = planner
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.planner.steps_per_epoch() - self.start_step

    def __iter__(self) -> Iterator[BatchPlan]:
        for step in range(self.start_step, self.planner.steps_per_epoch()):
            yield self.planner.plan(self.epoch, step)


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process, which finishes the step, checkpoints and
    stops them; otherwise Ctrl-C (sent to the whole process group) kills a worker mid-batch."""
    import signal

    from concutmix_cli.engine.runlock import close_in_child

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    close_in_child()  # a worker outliving a killed main process must not keep the run locked


def default_num_workers(device: torch.device) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type == "cuda":
        return max(1, min(8, (cpus or 2) - 1))
    return max(1, min(4, (cpus or 2) // 2))


def build_train_loader(
    data: PreparedData, planner: EpochPlanner, views_kind: str, contrast: bool,
    num_workers: int, device: torch.device,
) -> DataLoader:
    """A DataLoader of CPU `Batch`es, one per plan (`loader.sampler.set_epoch` picks the epoch)."""
    workers = default_num_workers(device) if num_workers < 0 else num_workers
    return DataLoader(
        StepDataset(data, views_kind, contrast),
        sampler=PlanSampler(planner),
        batch_size=None,  # the dataset makes whole batches
        generator=torch.Generator(),  # its worker base seed: unused, and not the caller's RNG
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        timeout=LOADER_TIMEOUT_S if workers > 0 else 0,
    )


class LoaderBatches:
    """The loader path: `Batch`es of each epoch on the training device."""

    def __init__(self, data: PreparedData, planner: EpochPlanner, views_kind: str, contrast: bool,
                 num_workers: int, device: torch.device):
        self.planner = planner
        self.device = device
        self.loader = build_train_loader(data, planner, views_kind, contrast, num_workers, device)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.loader.sampler.set_epoch(epoch, start_step)
        for batch in guarded(self.loader):  # no hang on a worker error
            yield batch.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the worker processes (however training ends, none outlives it)."""
        close(self.loader)


class DeviceBatches:
    """The device path: the uint8 training set lives on the device; views are made batch-wise.

    Each kind of view is made in ONE batched pass per step (view 0 of A together with the
    foreground view of B, views 1 and 2 together): on a GPU the cost is the number of kernel
    launches, not the pixels. The parameters are still drawn per view, in the order view 0,
    view 1, view 2, foreground, so the pixels equal four separate calls.

    With `prefetch`, a background thread makes step t+1's views while the training thread runs
    step t. On a GPU the augmentation is bound by the CPU launching small kernels, and the
    backward pass launches from autograd's own thread without the GIL, so the two overlap. Both
    threads queue on the same CUDA stream, in launch order, so step t+1's views are complete
    before anything reads them. The batches are identical with and without prefetching.
    """

    def __init__(self, data: PreparedData, planner: EpochPlanner, contrast: bool,
                 device: torch.device, prefetch: bool = False):
        from concutmix_cli.data.device import DeviceViews

        if data.train.images is None:
            raise ValueError("data.augment_on = 'device' needs an in-memory (CIFAR-like) dataset")
        self.images = data.train.images.permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(data.train.labels).to(device)
        self.views = DeviceViews(data.mean, data.std, image_size=self.images.shape[-1])
        self.planner = planner
        self.contrast = contrast
        self.device = device
        self.prefetch = prefetch

    def batch(self, epoch: int, step: int) -> Batch:
        plan = self.planner.plan(epoch, step)
        views = self.views
        gen = torch.Generator().manual_seed(plan.device_seed)
        index = torch.from_numpy(plan.indices).to(self.device, non_blocking=True)
        images = self.images[index]
        n, _, height, width = images.shape
        params0 = views.sample_classify(n, height, width, gen)
        params_contrast = [views.sample_contrast(n, height, width, gen) for _ in range(2)] if self.contrast else []
        out = {"labels": self.labels[index]}
        if plan.mix:
            fg = torch.from_numpy(plan.foreground).to(self.device, non_blocking=True)
            params_fg = views.sample_classify(n, height, width, gen)
            both = views.classify_uint8(torch.cat((images, self.images[fg])), params0.cat(params_fg))
            out["view0"], out["fg_view0"] = views.finish(both).split(n)
            out["fg_labels"] = self.labels[fg]
        else:
            out["view0"] = views.finish(views.classify_uint8(images, params0))
        if self.contrast:
            both = views.contrast_uint8(images.repeat(2, 1, 1, 1), params_contrast[0].cat(params_contrast[1]))
            out["view1"], out["view2"] = views.finish(both).split(n)
        return _plan_batch(plan, self.device, **out)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches from `start_step` to the end of the epoch, one step ahead when prefetching."""
        steps = range(start_step, self.planner.steps_per_epoch())
        if not self.prefetch:
            for step in steps:
                yield self.batch(epoch, step)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concutmix-views")
        try:
            pending = pool.submit(self._batch_in_thread, epoch, steps[0]) if steps else None
            for i, step in enumerate(steps):
                batch = pending.result()
                pending = pool.submit(self._batch_in_thread, epoch, steps[i + 1]) if i + 1 < len(steps) else None
                yield batch
        finally:  # also when the consumer stops early: wait for the batch in flight, drop the rest
            pool.shutdown(wait=True, cancel_futures=True)

    def _batch_in_thread(self, epoch: int, step: int) -> Batch:
        # the current CUDA device is per thread
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            return self.batch(epoch, step)

    def close(self) -> None:
        """Nothing to stop (the prefetch thread ends with each epoch's iterator)."""


class EvalBatches:
    """Deterministic evaluation batches (normalized), arrays in memory or list images via workers."""

    def __init__(self, data: PreparedData, split_name: str, views_kind: str, batch_size: int,
                 device: torch.device, num_workers: int = -1):
        self.split = data.split(split_name)
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.transform = eval_transform(views_kind, data.mean, data.std, data.view_side(views_kind))
        self.num_workers = default_num_workers(device) if num_workers < 0 else num_workers
        self.mean = torch.tensor(data.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = torch.from_numpy(self.split.labels)
        if self.split.images is not None:
            for start in range(0, len(self.split), self.batch_size):
                chunk = self.split.images[start : start + self.batch_size]
                x = chunk.permute(0, 3, 1, 2).float().div_(255)
                yield (x - self.mean) / self.std, labels[start : start + self.batch_size]
            return
        from concutmix_cli.data.lists import ListImageDataset

        dataset = ListImageDataset(self.data.root, self.split.entries, transform=self.transform)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            timeout=LOADER_TIMEOUT_S if self.num_workers > 0 else 0)
        yield from guarded(loader)

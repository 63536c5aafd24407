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
from concutmix_cli.data.device.shipping import stage
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


def _plan_batch(plan: BatchPlan, box: torch.Tensor | None = None, lam: torch.Tensor | None = None,
                **views: torch.Tensor) -> Batch:
    """The views with the plan's mixing decision (its box and lambda, or `box` and `lam`: the
    same, already on the device)."""
    if plan.mix and lam is None:
        lam = torch.tensor(plan.lam, dtype=torch.float32)
    return Batch(epoch=plan.epoch, step=plan.step, mixed=plan.mix, lam=lam,
                 box=plan.box if box is None else box, **views)


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

    from concutmix_cli.locking import close_in_child

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


# Bytes of device memory one sample costs per view in a chunk: its float32 output (kept until the
# step) plus the transients of the pass that makes it (the resized crop holds about eight float32
# copies of its inputs while it runs); auto takes at most this share of the free memory.
_VIEW_WORK_COPIES = 8
_EPOCH_VIEWS_MEMORY_SHARE = 0.25


def resolve_epoch_views(choice: str | int, device: torch.device, steps_per_epoch: int,
                        step_images: int, image_size: int, contrast: bool) -> int:
    """`data.epoch_views` as steps per chunk (1 = the per-step path). auto: on CUDA as many steps
    as fit a quarter of the free device memory (the whole epoch on a large card), 1 elsewhere:
    on a CPU one big pass is no faster (docs/benchmarks.md) and only holds more memory."""
    if choice == "off":
        return 1
    if choice == "epoch":
        return max(1, steps_per_epoch)
    if choice != "auto":
        return max(1, min(int(choice), steps_per_epoch))
    if device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(device)
    views = 2 + (2 if contrast else 0)  # view 0, the foreground view [, views 1 and 2]
    per_image = 3 * image_size * image_size * 4  # float32
    per_step = step_images * per_image * (views + 2 * _VIEW_WORK_COPIES)
    return max(1, min(steps_per_epoch, int(free * _EPOCH_VIEWS_MEMORY_SHARE) // max(1, per_step)))


class DeviceBatches:
    """The device path: the uint8 training set lives on the device; views are made batch-wise.

    Each kind of view is made in ONE batched pass per chunk of `chunk_steps` steps (view 0 of A
    together with the foreground view of B, views 1 and 2 together; `data.epoch_views`: a step,
    a few, or the whole epoch): on a GPU the cost is the number of kernel launches, not the
    pixels. The parameters are still drawn per step from the step's own generator, per view, in
    the order view 0, view 1, view 2, foreground, and every kernel treats each sample on its own,
    so the pixels equal four separate calls per step whatever the chunk (tests/test_device_batches.py).
    A chunk's image indices and CutMix boxes reach the device in one copy; its steps are slices.

    With `prefetch`, a background thread makes the next chunk's views while the training thread
    runs this chunk's steps. On a GPU the augmentation is bound by the CPU launching small
    kernels, and the backward pass launches from autograd's own thread without the GIL, so the
    two overlap. Both threads queue on the same CUDA stream, in launch order, so the views are
    complete before anything reads them. A whole-epoch chunk leaves it nothing to overlap (the
    epoch's views are made once, before its first step). The batches are identical either way.
    """

    def __init__(self, data: PreparedData, planner: EpochPlanner, contrast: bool,
                 device: torch.device, prefetch: bool = False, epoch_views: str | int = "off"):
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
        self.chunk_steps = resolve_epoch_views(epoch_views, device, planner.steps_per_epoch(),
                                               planner.batch_size // planner.world_size,
                                               self.views.image_size, contrast)

    def batch(self, epoch: int, step: int) -> Batch:
        return self.chunk(epoch, [step])[0]

    def chunk(self, epoch: int, steps) -> list[Batch]:
        """The batches of `steps`: each kind of view made in one pass over all of them."""
        views, (height, width) = self.views, self.images.shape[-2:]
        plans = [self.planner.plan(epoch, step) for step in steps]
        classify, contrast = [], []  # per-step parameters, drawn exactly as a lone step draws them
        classify_index, contrast_index = [], []  # (A, B) of each step; (A, A) of each step
        for plan in plans:
            n = len(plan.indices)
            gen = torch.Generator().manual_seed(plan.device_seed)
            classify.append(views.sample_classify(n, height, width, gen))
            classify_index.append(plan.indices)
            if self.contrast:
                contrast += [views.sample_contrast(n, height, width, gen) for _ in range(2)]
                contrast_index += [plan.indices, plan.indices]
            if plan.mix:
                classify.append(views.sample_classify(n, height, width, gen))
                classify_index.append(plan.foreground)
        boxes = [plan.box.numpy() for plan in plans if plan.mix]
        host = np.concatenate([*classify_index, *contrast_index, *boxes]).astype(np.int64, copy=False)
        staged = stage(torch.from_numpy(host), self.device)  # the chunk's one copy, through pinned memory
        index0, index_c, box = staged.split([sum(map(len, classify_index)), sum(map(len, contrast_index)),
                                             4 * len(boxes)])
        view0 = views.finish(views.classify_uint8(self.images[index0], classify[0].cat(*classify[1:])))
        parts0 = iter(zip(view0.split([len(i) for i in classify_index]),
                          self.labels[index0].split([len(i) for i in classify_index])))
        parts_c = iter(())
        if self.contrast:
            made = views.contrast_uint8(self.images[index_c], contrast[0].cat(*contrast[1:]))
            parts_c = iter(views.finish(made).split([len(i) for i in contrast_index]))
        boxes_on_device = iter(box.view(-1, 4))
        lams = [plan.lam for plan in plans if plan.mix]
        lams_on_device = iter(stage(torch.tensor(lams, dtype=torch.float32), self.device)
                              if lams else ())
        batches = []
        for plan in plans:
            out = dict(zip(("view0", "labels"), next(parts0)))
            if self.contrast:
                out["view1"], out["view2"] = next(parts_c), next(parts_c)
            if plan.mix:
                out["fg_view0"], out["fg_labels"] = next(parts0)
            if plan.mix:
                out.update(box=next(boxes_on_device), lam=next(lams_on_device))
            batches.append(_plan_batch(plan, **out))
        return batches

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches from `start_step` to the end of the epoch, a chunk ahead when prefetching
        (chunks start at `start_step`: a step's batch never depends on its chunk)."""
        steps = range(start_step, self.planner.steps_per_epoch())
        chunks = [steps[i : i + self.chunk_steps] for i in range(0, len(steps), self.chunk_steps)]
        if not self.prefetch:
            for steps_of_chunk in chunks:
                yield from self.chunk(epoch, steps_of_chunk)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concutmix-views")
        try:
            pending = pool.submit(self._chunk_in_thread, epoch, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                batches = pending.result()
                pending = pool.submit(self._chunk_in_thread, epoch, chunks[i + 1]) if i + 1 < len(chunks) else None
                yield from batches
        finally:  # also when the consumer stops early: wait for the chunk in flight, drop the rest
            pool.shutdown(wait=True, cancel_futures=True)

    def _chunk_in_thread(self, epoch: int, steps) -> list[Batch]:
        # the current CUDA device is per thread
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            return self.chunk(epoch, steps)

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

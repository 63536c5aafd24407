"""Turning step plans into batches of views: the loader path (PIL transforms in DataLoader workers)
and the device path (batched transforms on the training device). Both yield the same dict:

- `view0` [b, 3, H, W]: classification view of the background images A
- `labels` [b]: their classes
- `view1`, `view2` [b, 3, H, W]: contrastive views of A (only when the method uses them)
- `fg_view0`, `fg_labels`: classification view and classes of the foreground images B
  (only on mixed steps)
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from concutmix_cli.data.prepared import PreparedData, Split
from concutmix_cli.data.sampling import EpochPlanner
from concutmix_cli.data.views import eval_transform, training_views
from concutmix_cli.data.workers import LOADER_TIMEOUT_S, guarded


def _split_images(split: Split, root):
    """Index -> PIL image, for in-memory arrays or list datasets (images read from root)."""
    if split.images is not None:
        return lambda index: Image.fromarray(split.images[index].numpy())
    from concutmix_cli.data.lists import ListImageDataset

    images = ListImageDataset(root, split.entries, transform=None)
    return lambda index: images[index][0]


class ViewDataset(Dataset):
    """Maps a key (index_a, index_b or -1, seed) to the views of one sample.

    The transforms draw from torch's RNG seeded with the key's seed, so a sample's views depend
    only on (run seed, epoch, step, position), never on worker count or order.
    """

    def __init__(self, data: PreparedData, views_kind: str, contrast: bool):
        self.split = data.train
        self.image = _split_images(data.train, data.root)
        self.views = training_views(views_kind, data.mean, data.std)
        self.contrast = contrast
        self.labels = torch.from_numpy(data.train.labels)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        index_a, index_b, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.image(index_a)
            sample = {"view0": self.views.classify(image), "labels": self.labels[index_a]}
            if self.contrast:
                sample["view1"] = self.views.contrast(image)
                sample["view2"] = self.views.contrast(image)
            if index_b >= 0:
                foreground = self.image(index_b)
                sample["fg_view0"] = self.views.classify(foreground)
                sample["fg_labels"] = self.labels[index_b]
        return sample


class PlanBatchSampler(Sampler):
    """Yields, for each step of the current epoch from `start_step`, the keys of this process."""

    def __init__(self, planner: EpochPlanner):
        self.planner = planner
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.planner.steps_per_epoch() - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start_step, self.planner.steps_per_epoch()):
            plan = self.planner.plan(self.epoch, step)
            fg = plan.foreground if plan.mix else np.full(len(plan.indices), -1)
            yield [
                (int(a), int(b), int(s)) for a, b, s in zip(plan.indices, fg, plan.sample_seeds)
            ]


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
    workers = default_num_workers(device) if num_workers < 0 else num_workers
    return DataLoader(
        ViewDataset(data, views_kind, contrast),
        batch_sampler=PlanBatchSampler(planner),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        timeout=LOADER_TIMEOUT_S if workers > 0 else 0,
    )


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
        from concutmix_cli.data.device_augment import DeviceViews

        if data.train.images is None:
            raise ValueError("data.augment_on = 'device' needs an in-memory (CIFAR-like) dataset")
        self.images = data.train.images.permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(data.train.labels).to(device)
        self.views = DeviceViews(data.mean, data.std, image_size=self.images.shape[-1])
        self.planner = planner
        self.contrast = contrast
        self.device = device
        self.prefetch = prefetch

    def batch(self, epoch: int, step: int) -> dict[str, torch.Tensor]:
        plan = self.planner.plan(epoch, step)
        views = self.views
        gen = torch.Generator().manual_seed(plan.device_seed)
        index = torch.from_numpy(plan.indices).to(self.device, non_blocking=True)
        images = self.images[index]
        n, _, height, width = images.shape
        params0 = views.sample_classify(n, height, width, gen)
        params_contrast = [views.sample_contrast(n, height, width, gen) for _ in range(2)] if self.contrast else []
        sample = {"labels": self.labels[index]}
        if plan.mix:
            fg = torch.from_numpy(plan.foreground).to(self.device, non_blocking=True)
            params_fg = views.sample_classify(n, height, width, gen)
            both = views.classify_uint8(torch.cat((images, self.images[fg])), params0.cat(params_fg))
            sample["view0"], sample["fg_view0"] = views.finish(both).split(n)
            sample["fg_labels"] = self.labels[fg]
        else:
            sample["view0"] = views.finish(views.classify_uint8(images, params0))
        if self.contrast:
            both = views.contrast_uint8(images.repeat(2, 1, 1, 1), params_contrast[0].cat(params_contrast[1]))
            sample["view1"], sample["view2"] = views.finish(both).split(n)
        return sample

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(step, batch) from `start_step` to the end of the epoch, one step ahead when prefetching."""
        steps = range(start_step, self.planner.steps_per_epoch())
        if not self.prefetch:
            for step in steps:
                yield step, self.batch(epoch, step)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concutmix-views")
        try:
            pending = pool.submit(self._batch_in_thread, epoch, steps[0]) if steps else None
            for i, step in enumerate(steps):
                batch = pending.result()
                pending = pool.submit(self._batch_in_thread, epoch, steps[i + 1]) if i + 1 < len(steps) else None
                yield step, batch
        finally:  # also when the consumer stops early: wait for the batch in flight, drop the rest
            pool.shutdown(wait=True, cancel_futures=True)

    def _batch_in_thread(self, epoch: int, step: int) -> dict[str, torch.Tensor]:
        # the current CUDA device is per thread
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            return self.batch(epoch, step)


class EvalBatches:
    """Deterministic evaluation batches (normalized), arrays in memory or list images via workers."""

    def __init__(self, data: PreparedData, split_name: str, views_kind: str, batch_size: int,
                 device: torch.device, num_workers: int = -1):
        self.split = data.split(split_name)
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.transform = eval_transform(views_kind, data.mean, data.std)
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

"""What each training step sees: the instance-balanced order, the class-balanced foreground draw
and the CutMix decision, all derived from counters (seed, epoch, step).

Deriving every random choice from counters, not from a running RNG, is what makes a run
reproducible across worker counts, resumable mid-epoch, and identical between one process and G
processes that split the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from concutmix_cli.errors import BadValue
from concutmix_cli.mixing import sample_boxes

# Stream ids keep the counter-derived generators of different purposes independent.
_ORDER, _FOREGROUND, _MIX, _SAMPLE, _DEVICE = 1, 2, 3, 4, 5


def counter_rng(*counters: int) -> np.random.Generator:
    """An independent numpy Generator for a tuple of non-negative counters."""
    return np.random.default_rng([int(c) for c in counters])


def counter_seed(*counters: int) -> int:
    """A 63-bit seed (for torch) derived from counters."""
    return int(counter_rng(*counters).integers(0, 2**63 - 1))


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled (instance-balanced) order of one epoch."""
    return counter_rng(seed, _ORDER, epoch).permutation(num_samples)


class ClassBalancedSampler:
    """Draws image indices class-balanced: a class uniformly at random, then one of its images."""

    def __init__(self, labels: np.ndarray):
        labels = np.asarray(labels, dtype=np.int64)
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels)
        self.classes = np.flatnonzero(counts)  # classes with at least one image
        self.counts = counts[self.classes]
        self.offsets = np.concatenate([[0], np.cumsum(counts)])[self.classes]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(0, len(self.classes), size=n)
        within = (rng.random(n) * self.counts[which]).astype(np.int64)
        return self.order[self.offsets[which] + within]


@dataclass(frozen=True)
class BatchPlan:
    """One step's data for this process: background indices, foreground indices (when mixed),
    per-sample seeds for the loader's augmentation, and the CutMix decision shared by all
    processes (mixed, lambda and the one box of the batch, drawn here and nowhere else)."""

    epoch: int
    step: int
    indices: np.ndarray
    sample_seeds: np.ndarray
    mix: bool
    foreground: np.ndarray | None
    lam: float
    box: torch.Tensor | None
    """int64 [4] (y0, y1, x0, x1) on view 0 (`mixing.sample_boxes`), None when not mixed."""
    device_seed: int


class EpochPlanner:
    """Plans every step of every epoch. `foreground`: 'balanced' (ConCutMix), 'batch' (plain
    CutMix: a shuffle of the same global batch) or None (no mixing); `view_size`: the side of
    view 0, on which the CutMix box is drawn (32 for CIFAR views, 224 for ImageNet ones).
    The batch size is checked against the process count here, once."""

    def __init__(
        self,
        labels: np.ndarray,
        seed: int,
        batch_size: int,
        foreground: str | None,
        mix_prob: float,
        mix_beta: float,
        rank: int = 0,
        world_size: int = 1,
        max_steps: int = 0,
        drop_last: bool = False,
        view_size: int = 32,
    ):
        if batch_size % world_size:  # the one check of it (a config can be right for another G)
            raise BadValue(f"optim.batch_size {batch_size} must divide by the {world_size} "
                           "processes")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = seed
        self.batch_size = batch_size
        self.foreground = foreground
        self.mix_prob = mix_prob if foreground else 0.0
        self.mix_beta = mix_beta
        self.rank = rank
        self.world_size = world_size
        self.max_steps = max_steps
        self.view_size = view_size
        full, rest = divmod(len(self.labels), batch_size)
        # the last partial batch, trimmed to a multiple of the process count (equal local batches)
        self.partial_size = 0 if drop_last else rest - rest % world_size
        self.full_steps = full
        self.balanced = ClassBalancedSampler(self.labels) if foreground == "balanced" else None
        self._order_cache: tuple[int, np.ndarray] | None = None

    def steps_per_epoch(self) -> int:
        """The full global batches, then the last partial one unless `drop_last` (the published
        runs keep it: 43 steps on CIFAR-100-LT IF 100, the last of 95 images); capped by
        `max_steps` when set."""
        steps = self.full_steps + (1 if self.partial_size else 0)
        return min(steps, self.max_steps) if self.max_steps else steps

    def global_batch_size(self, step: int) -> int:
        """Images in the global batch of `step`: batch_size, or the partial size at the end."""
        return self.batch_size if step < self.full_steps else self.partial_size

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(len(self.labels), self.seed, epoch))
        return self._order_cache[1]

    def plan(self, epoch: int, step: int) -> BatchPlan:
        size = self.global_batch_size(step)
        start = step * self.batch_size
        global_idx = self._order(epoch)[start : start + size]
        mix_rng = counter_rng(self.seed, _MIX, epoch, step)
        mix = bool(mix_rng.random() < self.mix_prob)
        lam = float(mix_rng.beta(self.mix_beta, self.mix_beta)) if mix else 1.0
        box_seed = int(mix_rng.integers(0, 2**63 - 1))
        box = global_fg = None
        if mix:  # one box for the batch, from lambda as float32 (as the step always drew it)
            generator = torch.Generator().manual_seed(box_seed % 2**63)
            box = sample_boxes(torch.tensor([lam]), self.view_size, self.view_size, generator)[0]
            fg_rng = counter_rng(self.seed, _FOREGROUND, epoch, step)
            if self.foreground == "balanced":
                global_fg = self.balanced.draw(size, fg_rng)
            else:
                global_fg = global_idx[fg_rng.permutation(size)]
        seeds = counter_rng(self.seed, _SAMPLE, epoch, step).integers(0, 2**63 - 1, size=size)
        local = slice(self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size)
        return BatchPlan(
            epoch=epoch,
            step=step,
            indices=global_idx[local],
            sample_seeds=seeds[local],
            mix=mix,
            foreground=None if global_fg is None else global_fg[local],
            lam=lam,
            box=box,
            device_seed=counter_seed(self.seed, _DEVICE, epoch, step, self.rank),
        )

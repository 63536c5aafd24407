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
from concutmix_cli.mixing import CutMix, MixDecision

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
    per-sample seeds for the loader's augmentation, and the step's CutMix decision, shared by all
    processes (`mixing.CutMix.decide`, made here and nowhere else)."""

    epoch: int
    step: int
    indices: np.ndarray
    sample_seeds: np.ndarray
    foreground: np.ndarray | None
    mix_decision: MixDecision | None
    """Lambda and the one box of the batch on view 0; None when the step is not mixed."""
    device_seed: int

    @property
    def mix(self) -> bool:
        return self.mix_decision is not None

    @property
    def box(self) -> torch.Tensor | None:
        return None if self.mix_decision is None else self.mix_decision.box

    @property
    def lam(self) -> float:
        return 1.0 if self.mix_decision is None else self.mix_decision.lam


class EpochPlanner:
    """Plans every step of every epoch. `cutmix`: the method's mixing (`mixing.CutMix`, which
    says where the foreground images come from and on what view size the box is drawn), or None
    for a method that does not mix. The batch size is checked against the process count here,
    once."""

    def __init__(
        self,
        labels: np.ndarray,
        seed: int,
        batch_size: int,
        cutmix: CutMix | None,
        rank: int = 0,
        world_size: int = 1,
        max_steps: int = 0,
        drop_last: bool = False,
    ):
        if batch_size % world_size:  # the one check of it (a config can be right for another G)
            raise BadValue(f"optim.batch_size {batch_size} must divide by the {world_size} "
                           "processes")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = seed
        self.batch_size = batch_size
        self.cutmix = cutmix
        self.rank = rank
        self.world_size = world_size
        self.max_steps = max_steps
        full, rest = divmod(len(self.labels), batch_size)
        # the last partial batch, trimmed to a multiple of the process count (equal local batches)
        self.partial_size = 0 if drop_last else rest - rest % world_size
        self.full_steps = full
        balanced = cutmix is not None and cutmix.foreground == "balanced"
        self.balanced = ClassBalancedSampler(self.labels) if balanced else None
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
        decision = global_fg = None
        if self.cutmix is not None:
            decision = self.cutmix.decide(counter_rng(self.seed, _MIX, epoch, step))
        if decision is not None:
            global_fg = self.cutmix.pick_foreground(
                global_idx, counter_rng(self.seed, _FOREGROUND, epoch, step),
                None if self.balanced is None else self.balanced.draw)
        seeds = counter_rng(self.seed, _SAMPLE, epoch, step).integers(0, 2**63 - 1, size=size)
        local = slice(self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size)
        return BatchPlan(
            epoch=epoch,
            step=step,
            indices=global_idx[local],
            sample_seeds=seeds[local],
            foreground=None if global_fg is None else global_fg[local],
            mix_decision=decision,
            device_seed=counter_seed(self.seed, _DEVICE, epoch, step, self.rank),
        )

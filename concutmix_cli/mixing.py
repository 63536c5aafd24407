"""CutMix with a class-balanced foreground (docs/method-notes.md section 3): the one owner of mixing.

`CutMix` decides a step's mix (the probability, the Beta draw of lambda, the box, where the
foreground images come from), pastes the box and builds the area labels, as timm's `Mixup` owns
its alphas, mode and targets. The planner (data/sampling.py) asks it for each step's decision,
the training step (engine/step.py) applies it, and inspect-labels (inspect.py) draws through the
very same object, so what inspect-labels shows is what training does.

Decisions are drawn from a counter-derived numpy Generator handed in by the caller (and the box
from a torch Generator seeded from it) on the CPU, so a run is reproducible from its seed and
resumable mid-epoch (the reference reseeded numpy inside the dataset and repeated its lambda
draws: docs/method-notes.md section 8). Pasting and labels run on the images' own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

__all__ = ["CutMix", "MixDecision", "area_labels", "box_masks", "paste", "sample_boxes"]

Foreground = Literal["batch", "balanced"]


@dataclass(frozen=True)
class MixDecision:
    """One CutMix draw: lambda, the Beta draw (the exact per-sample lambda is recounted from the
    clipped box when pasting), and the box, int64 [4] (y0, y1, x0, x1), half-open."""

    lam: float
    box: torch.Tensor


class CutMix:
    """CutMix of view 0 with a foreground image: probability `prob`, lambda ~ Beta(`beta`,
    `beta`), boxes on a `size` x `size` view, foreground images from a shuffle of the same batch
    ('batch', plain CutMix) or a class-balanced draw ('balanced', ConCutMix).

    Training draws one decision per batch (one lambda, one box for every sample, as the
    reference does); `decide_each` draws one per sample, for inspect-labels' explicit option."""

    def __init__(self, prob: float, beta: float, foreground: Foreground, size: int):
        if not (0.0 <= prob <= 1.0):
            raise ValueError(f"CutMix: prob must be in [0, 1], got {prob}")
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"CutMix: beta must be a finite number > 0, got {beta}")
        if foreground not in ("batch", "balanced"):
            raise ValueError(f"CutMix: foreground must be 'batch' or 'balanced', got {foreground!r}")
        if size < 1:
            raise ValueError(f"CutMix: the view size must be >= 1, got {size}")
        self.prob, self.beta, self.foreground, self.size = float(prob), float(beta), foreground, size

    @classmethod
    def of_method(cls, method, settings, size: int) -> "CutMix | None":
        """The mixing of a method's row (`methods.Method`; None when it does not mix) under its
        settings (`config.MethodConfig`: cutmix_prob, cutmix_beta), boxes on `size` x `size`."""
        if method.foreground is None:
            return None
        return cls(settings.cutmix_prob, settings.cutmix_beta, method.foreground, size)

    def decide(self, rng: np.random.Generator) -> MixDecision | None:
        """A step's decision from its own generator: mixed with probability `prob` (None when
        not), then `draw` (the draws, in this order, are what every recorded run replays)."""
        return self.draw(rng) if rng.random() < self.prob else None

    def decide_each(self, n: int, rng: np.random.Generator) -> list[MixDecision]:
        """`n` independent mixed decisions (one per sample), ignoring `prob`."""
        return [self.draw(rng) for _ in range(n)]

    def draw(self, rng: np.random.Generator) -> MixDecision:
        """One mixed decision: lambda ~ Beta(beta, beta) from `rng`, then the box of lambda (as
        float32) drawn by a torch Generator seeded from `rng`."""
        lam = float(rng.beta(self.beta, self.beta))
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        return MixDecision(lam, sample_boxes(torch.tensor([lam]), self.size, self.size, generator)[0])

    def pick_foreground(self, background: np.ndarray, rng: np.random.Generator,
                        balanced: Callable[[int, np.random.Generator], np.ndarray] | None
                        ) -> np.ndarray:
        """The foreground image of each background image: `balanced(n, rng)` (a class-balanced
        sampler's draw) for ConCutMix, a permutation of the batch itself for plain CutMix."""
        if self.foreground == "balanced":
            if balanced is None:
                raise ValueError("CutMix('balanced') needs the class-balanced sampler's draw")
            return balanced(len(background), rng)
        return background[rng.permutation(len(background))]

    @staticmethod
    def apply(background: torch.Tensor, foreground: torch.Tensor, box: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste the foreground's `box` ([4], the batch's one box, or [N, 4], one per sample)
        into each background; returns (mixed, exact lambda per sample [N])."""
        boxes = box.expand(background.shape[0], 4) if box.dim() == 1 else box
        return paste(background, foreground, boxes)

    @staticmethod
    def targets(class_a: torch.Tensor, class_b: torch.Tensor, lam: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        """The area labels of mixed samples (`area_labels`)."""
        return area_labels(class_a, class_b, lam, num_classes)


def sample_boxes(
    lam: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boxes [N, 4] int64 (y0, y1, x0, x1), half-open, on the CPU, one per lambda draw.

    The reference's `rand_bbox` arithmetic (method notes, section 3): the half side is
    `int(side * sqrt(1 - lam)) // 2` per axis (truncated, so the unclipped side is even and covers
    a little less than 1 - lam: the mean exact lambda over Beta(1, 1) is about 0.700 on 32x32),
    the centre a uniformly random pixel (rows drawn first, then columns, from `generator`), and
    the box `[centre - half, centre + half)` clipped to the image, which is why `paste` recomputes
    lambda from the actual box.
    """
    if height < 1 or width < 1:
        raise ValueError(f"sample_boxes: image size must be >= 1x1, got {height}x{width}")
    lam = torch.as_tensor(lam).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    n = lam.numel()
    ratio = torch.sqrt((1.0 - lam).clamp(0.0, 1.0))
    half_h = torch.trunc(ratio * height).to(torch.int64) // 2
    half_w = torch.trunc(ratio * width).to(torch.int64) // 2
    cy = torch.randint(0, height, (n,), generator=generator, dtype=torch.int64)
    cx = torch.randint(0, width, (n,), generator=generator, dtype=torch.int64)
    return torch.stack(
        [(cy - half_h).clamp(0, height), (cy + half_h).clamp(0, height),
         (cx - half_w).clamp(0, width), (cx + half_w).clamp(0, width)], dim=1
    )


def box_masks(
    boxes: torch.Tensor, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool masks [N, 1, H, W], True inside each half-open box; broadcasts against [N, C, H, W].

    Built from arange comparisons (no per-sample loop); boxes reaching outside the image are
    effectively clipped by the comparisons.
    """
    device = boxes.device if device is None else torch.device(device)
    b = boxes.to(device=device, dtype=torch.int64)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"box_masks: boxes must have shape [N, 4], got {list(boxes.shape)}")
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    y0, y1, x0, x1 = (b[:, i].view(-1, 1, 1) for i in range(4))
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return inside.unsqueeze(1)


def paste(
    background: torch.Tensor, foreground: torch.Tensor, boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each foreground's box into its background; returns (mixed, lam).

    lam [N] float32 on the images' device is the exact fraction of the background's pixels
    left (counted from the mask), which is the weight of the background's class in the area
    label. Works for any dtype (float, uint8) since it only selects pixels.
    """
    if background.shape != foreground.shape or background.dim() != 4:
        raise ValueError(
            "paste: background and foreground must both be [N, C, H, W] of the same shape, got "
            f"{list(background.shape)} and {list(foreground.shape)}"
        )
    if boxes.shape != (background.shape[0], 4):
        raise ValueError(f"paste: boxes must be [N, 4] with N = {background.shape[0]}, got {list(boxes.shape)}")
    height, width = background.shape[-2:]
    mask = box_masks(boxes, height, width, device=background.device)
    mixed = torch.where(mask, foreground.to(background.dtype), background)
    total = height * width
    remaining = total - mask.sum(dim=(1, 2, 3))
    lam = remaining.to(torch.float32) / float(total)
    return mixed, lam


def area_labels(
    class_a: torch.Tensor, class_b: torch.Tensor, lam: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Soft labels [N, C]: lam * onehot(a) + (1 - lam) * onehot(b), exactly onehot(a) when a == b.

    Float dtype follows lam (float32 if lam is not a float tensor); device follows class_a.
    """
    device = class_a.device
    lam = torch.as_tensor(lam, device=device)
    if not lam.is_floating_point():
        lam = lam.to(torch.float32)
    lam = lam.expand(class_a.shape[0]) if lam.dim() == 0 else lam
    onehot_a = _onehot(class_a, num_classes, lam.dtype)
    onehot_b = _onehot(class_b.to(device), num_classes, lam.dtype)
    lam_col = lam.unsqueeze(1)
    mixed = lam_col * onehot_a + (1.0 - lam_col) * onehot_b
    same = (class_a == class_b.to(device)).unsqueeze(1)
    return torch.where(same, onehot_a, mixed)


def _onehot(classes: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """`F.one_hot` without its range check, which reads the labels' min and max on the host (a
    sync in every training step); an out-of-range class still fails, in the scatter."""
    out = torch.zeros(classes.shape[0], num_classes, dtype=dtype, device=classes.device)
    return out.scatter_(1, classes.long().unsqueeze(1), 1.0)

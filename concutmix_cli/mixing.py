"""CutMix with a class-balanced foreground (docs/method-notes.md section 3), as pure tensor functions.

The sampler picks *which* images are mixed; this module only draws lambda and the boxes,
pastes, and builds the area labels. Boxes and lambda draws are made on the CPU with an explicit
`torch.Generator`, so a run is reproducible from its seed and its saved generator state (the
reference code reseeded numpy inside the dataset and repeated its lambda draws: docs/method-notes.md section 8).
Pasting and labels run on the images' own device (CPU or CUDA alike).
"""

from __future__ import annotations

import math

import torch

__all__ = ["area_labels", "box_masks", "draw_lambda", "paste", "sample_boxes"]


def draw_lambda(n: int, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` draws of Beta(beta, beta) as float32 on the CPU, reproducible from `generator`.

    Beta(1, 1) (the published recipe) is Uniform(0, 1): drawn directly with `torch.rand`.
    torch's gamma sampler (hence `torch.distributions.Beta`) cannot take a generator, so for any
    other beta we draw a seed from `generator` and sample under `torch.random.fork_rng` seeded
    with it: the result depends only on the generator's state, and the global CPU RNG is left
    exactly as it was. With `generator=None` the global RNG is used directly.
    """
    if n < 0:
        raise ValueError(f"draw_lambda: n must be >= 0, got {n}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"draw_lambda: beta must be a finite number > 0, got {beta}")
    if beta == 1.0:
        return torch.rand(n, generator=generator, dtype=torch.float32)
    conc = torch.full((n,), float(beta), dtype=torch.float32)
    dist = torch.distributions.Beta(conc, conc)
    if generator is None:
        return dist.sample().clamp_(0.0, 1.0)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample().clamp_(0.0, 1.0)


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

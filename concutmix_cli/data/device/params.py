"""Per-sample random parameters of the views, drawn on the CPU from the caller's generator.

Everything random about a view is drawn here, in a fixed order, as small per-sample tensors:
the same generator state gives the same parameters (and so the same pixels) on every device.
torchvision's distributions, vectorized (its get_params, its float32 uniform_ draws).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .recipe import ViewRecipe


class _Rows:
    """Per-sample parameter tables: every field is a tensor with one row per sample."""

    def cat(self, *others):
        """These rows followed by those of `others` (so several views go through one pass)."""
        parts = (self, *others)
        return type(self)(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(self)))

    def __len__(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])


@dataclass
class ClassifyParams(_Rows):
    """Per-sample parameters of view 0 (CPU tensors, N rows)."""

    top: torch.Tensor  # int64, crop offset in the padded image, 0..H+2p-size
    left: torch.Tensor  # int64
    flip: torch.Tensor  # bool
    aa_op: torch.Tensor  # int64 [N, 2]: op id of each slot (autoaugment.AA_OPS), -1 where not applied
    aa_magnitude: torch.Tensor  # float64 [N, 2]: signed magnitude


@dataclass
class ContrastParams(_Rows):
    """Per-sample parameters of views 1/2 (CPU tensors, N rows)."""

    top: torch.Tensor  # int64 resized-crop box
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: ColorJitter applied (p 0.8)
    order: torch.Tensor  # int64 [N, 4]: op applied at step k (0 brightness, 1 contrast, 2 saturation, 3 hue)
    brightness: torch.Tensor  # float32 factors, as torchvision draws them (float32 uniform_)
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor  # bool (p 0.2)
    blur: torch.Tensor  # bool (p 0.5)
    sigma: torch.Tensor  # float32, U(0.1, 2)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float32).uniform_(low, high, generator=generator)


def sample_resized_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                              ratio: tuple[float, float], generator: torch.Generator,
                              attempts: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop.get_params, vectorized: (top, left, h, w) int64 [n]."""
    area = float(height * width)
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(
        float(log_ratio[0]), float(log_ratio[1]), generator=generator))
    w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)  # round half to even, like Python round
    h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid attempt
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    fw, fh = _fallback_size(height, width, ratio)
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1).to(torch.float64)).to(torch.int64).clamp_(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1).to(torch.float64)).to(torch.int64).clamp_(max=width - w)
    top = torch.where(any_ok, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(any_ok, left, torch.div(width - w, 2, rounding_mode="floor"))
    return top, left, h, w


def _fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(w, h) of torchvision's fallback (no valid attempt): the central crop, ratio clamped."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def sample_classify(recipe: ViewRecipe, n: int, height: int, width: int, generator: torch.Generator) -> ClassifyParams:
    """View 0's parameters: crop offset, flip, AutoAugment sub-policy / applied slots / signs."""
    p, size = recipe.padding, recipe.image_size
    if height + 2 * p < size or width + 2 * p < size:
        raise ValueError(f"images of {height}x{width} with padding {p} are smaller than {size}")
    top = torch.randint(0, height + 2 * p - size + 1, (n,), generator=generator)
    left = torch.randint(0, width + 2 * p - size + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < recipe.flip_p
    t = recipe.aa_table
    policy = torch.randint(0, t.num_policies, (n,), generator=generator)
    probs = torch.rand(n, 2, generator=generator)
    signs = torch.randint(0, 2, (n, 2), generator=generator)
    active = probs <= t.prob[policy].to(torch.float32)  # AutoAugment: probs[i] <= p (float32)
    mag = t.magnitude[policy]
    mag = torch.where(t.signed[policy] & (signs == 0), -mag, mag)
    op = torch.where(active, t.op[policy], torch.full_like(policy[:, None].expand(n, 2), -1))
    return ClassifyParams(top, left, flip, op, mag)


def sample_contrast(recipe: ViewRecipe, n: int, height: int, width: int, generator: torch.Generator) -> ContrastParams:
    """Views 1/2's parameters: crop box, flip, jitter (applied, order, factors), gray, blur, sigma."""
    top, left, h, w = sample_resized_crop_boxes(n, height, width, recipe.crop_scale, recipe.crop_ratio, generator)
    flip = torch.rand(n, generator=generator) < recipe.flip_p
    jitter = torch.rand(n, generator=generator) <= recipe.jitter_p  # RandomApply: skip if p < u
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)  # uniform permutation
    (b0, b1), (c0, c1), (s0, s1), (h0, h1) = recipe.jitter_ranges
    brightness = _uniform(n, b0, b1, generator)
    contrast = _uniform(n, c0, c1, generator)
    saturation = _uniform(n, s0, s1, generator)
    hue = _uniform(n, h0, h1, generator)
    gray = torch.rand(n, generator=generator) < recipe.gray_p
    blur = torch.rand(n, generator=generator) <= recipe.blur_p
    sigma = _uniform(n, recipe.blur_sigma[0], recipe.blur_sigma[1], generator)
    return ContrastParams(top, left, h, w, flip, jitter, order, brightness, contrast, saturation, hue, gray, blur,
                          sigma)

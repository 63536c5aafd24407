"""AutoAugment's pointwise ops as per-sample lookup tables: Brightness, Posterize, Solarize, Invert.

Each maps every uint8 value on its own, so one gather with a [n, 256] table applies any mix of
them (torchvision's arithmetic, tabulated on the CPU).
"""

from __future__ import annotations

from enum import IntEnum

import torch

from .constants import UINT8_MAX


class Pointwise(IntEnum):
    """The pointwise ops a lookup table can hold (IDENTITY: the value itself)."""

    IDENTITY = 0
    BRIGHTNESS = 1  # magnitude m: value * (1 + m)
    POSTERIZE = 2  # m bits kept
    SOLARIZE = 3  # values >= m inverted
    INVERT = 4


def pointwise_luts(kind: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 256] lookup tables: sample i's op `kind[i]` (a `Pointwise`) with `magnitude[i]`."""
    n = kind.shape[0]
    v8 = torch.arange(256, dtype=torch.int64).expand(n, 256)
    vf = v8.to(torch.float32)
    m = magnitude.to(torch.float64)[:, None]
    lut = v8.clone()
    sel = (kind == Pointwise.BRIGHTNESS)[:, None]
    lut = torch.where(sel, vf.mul((1.0 + m).to(torch.float32)).clamp_(0.0, UINT8_MAX).to(torch.int64), lut)
    sel = (kind == Pointwise.POSTERIZE)[:, None]
    bits = torch.trunc(m).to(torch.int64).clamp(0, 8)
    lut = torch.where(sel, v8 & (((1 << bits) - 1) << (8 - bits)), lut)
    sel = (kind == Pointwise.SOLARIZE)[:, None]
    lut = torch.where(sel & (vf >= m.to(torch.float32)), 255 - v8, lut)
    sel = (kind == Pointwise.INVERT)[:, None]
    lut = torch.where(sel, 255 - v8, lut)
    return lut.to(torch.uint8)


def apply_luts(images: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    """Each image through its own table (luts [n, 256] uint8, on the images' device)."""
    n = images.shape[0]
    return luts.gather(1, images.reshape(n, -1).to(torch.int64)).view_as(images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.posterize (keep the `bits` high bits)."""
    bits = torch.as_tensor(bits).cpu().to(torch.int64).reshape(-1).expand(images.shape[0])
    luts = pointwise_luts(torch.full_like(bits, Pointwise.POSTERIZE), bits.to(torch.float64))
    return apply_luts(images, luts.to(images.device))


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.solarize (invert values >= threshold)."""
    t = torch.as_tensor(threshold).cpu().to(torch.float64).reshape(-1).expand(images.shape[0])
    luts = pointwise_luts(torch.full(t.shape, Pointwise.SOLARIZE,
                                     dtype=torch.int64), t)
    return apply_luts(images, luts.to(images.device))

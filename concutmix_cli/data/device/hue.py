"""Hue rotation (ColorJitter's hue), torchvision's float HSV arithmetic with per-sample shifts."""

from __future__ import annotations

import torch

from .constants import UINT8_MAX, device_constant

# For each hue sextant i (columns), which of (v, p, q, t) is R, G and B (rows).
_HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as torchvision's (PIL-derived) tensor implementation.
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    neq_r = maxc != r
    eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(eq_g & neq_r)
    hr = bc.sub_(gc).mul_(~neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(neq_r.logical_and_(eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int64).remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)  # [n, 4, H, W]
    select = device_constant("hsv_select", img.device,
                             lambda d: torch.tensor(_HSV_SELECT, dtype=torch.int64).to(d))  # [3, 6]
    index = select[:, i].moveaxis(0, -3)  # [n, 3, H, W]
    return vpqt.gather(-3, index)


def hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each uint8 image by its `shift` ([n, 1, 1] float32, fraction of the circle)."""
    x = images.to(torch.float32).mul_(1.0 / UINT8_MAX)  # to_dtype(float32, scale=True)
    h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
    h = h.add(shift).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(UINT8_MAX + 1.0 - 1e-3).to(torch.uint8)  # to_dtype(uint8, scale=True)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample hue shift in [-0.5, 0.5] (fraction of the hue circle), torchvision semantics."""
    return hue(images, factor.to(images.device, torch.float32).reshape(-1, 1, 1))

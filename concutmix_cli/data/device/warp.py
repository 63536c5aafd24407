"""Affine warps with per-sample matrices (AutoAugment's shears, translations and rotations).

torchvision's arithmetic: its inverse affine matrix, its rescaled theta and base grid, sampled by
`grid_sample`; nearest or bicubic resampling, uncovered pixels a grey `fill` placed as the
reference's PIL resampling places it. The grid is built elementwise (no matmul, so GPU TF32
settings cannot move a pixel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from ..views import AUTOAUGMENT_FILL
from .constants import UINT8_MAX, device_constant


def inverse_affine_matrices(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, shear_x: torch.Tensor,
                            shear_y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """torchvision's `_get_inverse_affine_matrix` (scale 1), vectorized in float64: [n, 6].
    Angles and shears in degrees, translation in pixels, centre (cx, cy) relative to the image centre."""
    rot = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x)
    sy = torch.deg2rad(shear_y)
    cos_sy = torch.cos(sy)
    tan_sx = torch.tan(sx)
    rot_minus_sy = rot - sy
    cx_plus_tx = cx + tx
    cy_plus_ty = cy + ty
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d / 1.0, -b / 1.0, -c / 1.0, a / 1.0
    m2 = 0.0 + (cx - m0 * cx_plus_tx - m1 * cy_plus_ty)
    m5 = 0.0 + (cy - m3 * cx_plus_tx - m4 * cy_plus_ty)
    return torch.stack((m0, m1, m2, m3, m4, m5), dim=1)


def rescaled_theta(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [n, 3, 2] = theta^T / (w/2, h/2), as torchvision's _affine_grid computes it."""
    theta = matrices.to(torch.float32).reshape(-1, 2, 3)
    return theta.transpose(1, 2).div(torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32))


def _make_base_grid(height: int, width: int, device) -> torch.Tensor:
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(
        torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    return base.view(1, height * width, 3)


def base_grid(height: int, width: int, device) -> torch.Tensor:
    """torchvision's base grid of pixel centres [1, H*W, 3] (x, y, 1), cached per device."""
    return device_constant(("base_grid", height, width), device, lambda d: _make_base_grid(height, width, d))


def affine_apply(images: torch.Tensor, theta: torch.Tensor, mode: str = "nearest", fill: float = 0.0) -> torch.Tensor:
    """Warp uint8 images with rescaled thetas [n, 3, 2] (`rescaled_theta`), `mode` nearest or bicubic."""
    n, c, h, w = images.shape
    base = base_grid(h, w, images.device)
    # base @ theta written out elementwise (no matmul, so no TF32 on GPUs); the third base
    # coordinate is 1.
    grid = (base[..., 0:1] * theta[:, None, 0, :]).add_(base[..., 1:2] * theta[:, None, 1, :])
    grid = grid.add_(theta[:, None, 2, :])
    grid = grid.view(n, h, w, 2)
    x = images.to(torch.float32)
    if mode == "bicubic":
        # As PIL resamples: taps past the edge repeat the edge pixel, and a pixel whose source
        # centre lies outside the image is `fill` (PIL's test `xin < 0 or xin >= xsize`).
        out = nnf.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        outside = ((grid < -1.0) | (grid >= 1.0)).any(dim=-1).unsqueeze(1)
        out = out.masked_fill_(outside, fill)
    else:
        # Nearest: sampling `images - fill` with zero padding and adding `fill` back puts `fill`
        # exactly where torchvision's nearest warp would put its fill.
        out = nnf.grid_sample(x - fill if fill else x, grid, mode=mode, padding_mode="zeros", align_corners=False)
        if fill:
            out = out.add_(fill)
    return out.round_().clamp_(0.0, UINT8_MAX).to(torch.uint8)


def affine_warp(images: torch.Tensor, matrices: torch.Tensor, mode: str = "nearest",
                fill: float = AUTOAUGMENT_FILL) -> torch.Tensor:
    """Per-sample affine warp (`mode` nearest or bicubic), uncovered pixels `fill`; `matrices`
    [n, 6] are torchvision's inverse affine matrices (output pixel -> input pixel, centred)."""
    _, _, h, w = images.shape
    theta = rescaled_theta(matrices.cpu(), h, w).to(images.device)
    return affine_apply(images, theta, mode=mode, fill=float(fill))

"""Gaussian blur with a per-sample sigma (views 1/2), separable, reflect padding, torchvision's kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from ..views import CIFAR_BLUR_KERNEL
from .constants import UINT8_MAX


def blur_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernels (float32 linspace, softmax), one row per sigma."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=sigma.device)
    s = sigma.to(torch.float32)[:, None]
    return torch.softmax(x[None, :].div(s).pow(2).neg(), dim=1)


def blur_apply(images: torch.Tensor, k1d: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Separable blur with per-sample 1-D kernels k1d [n, K], reflect padding, rounded to uint8.

    method "conv" (the CPU default): grouped convolutions, fastest on CPUs. method "unfold" (the
    default elsewhere): elementwise products and sums over unfolded windows, so GPU TF32 settings
    (which round convolution inputs to 10-bit mantissas) cannot change the result."""
    n, c, h, w = images.shape
    k = k1d.shape[1]
    p = k // 2
    method = method or ("conv" if images.device.type == "cpu" else "unfold")
    x = nnf.pad(images.to(torch.float32), (p, p, p, p), mode="reflect")  # [n, c, h+2p, w+2p]
    if method == "conv":
        kk = k1d.repeat_interleave(c, dim=0)  # [n*c, k]
        x = x.reshape(1, n * c, h + 2 * p, w + 2 * p)
        x = nnf.conv2d(x, kk.reshape(n * c, 1, k, 1), groups=n * c)
        x = nnf.conv2d(x, kk.reshape(n * c, 1, 1, k), groups=n * c).reshape(n, c, h, w)
    elif method == "unfold":
        kv = k1d.view(n, 1, 1, 1, k)
        x = x.unfold(2, k, 1).mul(kv).sum(-1)  # vertical: [n, c, h, w+2p]
        x = x.unfold(3, k, 1).mul(kv).sum(-1)  # horizontal: [n, c, h, w]
    else:
        raise ValueError(f"unknown blur method {method!r}")
    return x.round_().clamp_(0.0, UINT8_MAX).to(torch.uint8)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int = CIFAR_BLUR_KERNEL,
                  method: str | None = None) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur, reflect padding, rounded to uint8 (torchvision semantics;
    computed separably, so results may differ from the 2-D kernel by one step at rounding ties)."""
    if kernel_size % 2 == 0 or kernel_size <= 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    return blur_apply(images, blur_kernels(sigma.to(images.device), kernel_size), method)

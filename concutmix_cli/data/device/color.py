"""Colour ops that blend an image with its gray version or its mean (torchvision's uint8 arithmetic):
brightness, contrast, saturation (ColorJitter, AutoAugment Color/Contrast), sharpness, grayscale.

`mixed_blend` does brightness, contrast, saturation and identity in ONE pass with per-sample
parameters, so a group of samples that drew different ops costs one set of kernels.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from .constants import UINT8_MAX


def _col(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    return t.to(device=device, dtype=dtype).reshape(-1, 1, 1, 1)


def _gray_float(images: torch.Tensor) -> torch.Tensor:
    """torchvision's luma (0.2989, 0.587, 0.114) in float32, [n, 1, H, W], same op order."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def ratio_alpha(factor: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor, 1 - factor) as float32 columns; 1 - factor is computed in the factor's own precision
    first (torchvision computes it in double from the Python float)."""
    f = factor if factor.is_floating_point() else factor.to(torch.float64)
    return _col(f, device, torch.float32), _col(1.0 - f, device, torch.float32)


def fma(acc: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """float32 ``acc + t * alpha`` rounded once, as torch's ``add_(t, alpha=a)`` computes it (a fused
    multiply-add on CPU and CUDA); emulated exactly enough in float64. Devices without float64
    (MPS) get the twice-rounded float32 result, which differs by at most one uint8 step later."""
    if acc.device.type == "mps":
        return acc.add_(t.mul(alpha))
    return acc.double().add_(t.double().mul_(alpha.double())).float()


def mixed_blend(images: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor,
                w_gray: torch.Tensor | None, w_mean: torch.Tensor | None) -> torch.Tensor:
    """Brightness, contrast, saturation and identity in one pass with per-sample parameters:
    ``images * ratio + other * alpha`` with ``other = gray * w_gray + mean(gray) * w_mean``.
    Brightness: alpha 0; contrast: w_mean 1; saturation: w_gray 1; identity: ratio 1, alpha 0.
    The 0/1 weights make every selection exact; `None` weights mean "no sample needs it"."""
    x = images.to(torch.float32).mul_(ratio)
    if w_gray is not None or w_mean is not None:
        gray = _gray_float(images).floor_()
        other = None
        if w_mean is not None:
            other = gray.mean(dim=(-3, -2, -1), keepdim=True).mul_(w_mean)
        if w_gray is not None:
            gray = gray.mul_(w_gray)
            other = gray if other is None else gray.add_(other)
        x = fma(x, other, alpha)
    return x.clamp_(0.0, UINT8_MAX).to(torch.uint8)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_brightness (uint8 in, uint8 out)."""
    ratio, _ = ratio_alpha(factor, images.device)
    return mixed_blend(images, ratio, torch.zeros_like(ratio), None, None)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_saturation (uint8 in, uint8 out)."""
    ratio, alpha = ratio_alpha(factor, images.device)
    return mixed_blend(images, ratio, alpha, torch.ones_like(ratio), None)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_contrast (uint8 in, uint8 out)."""
    ratio, alpha = ratio_alpha(factor, images.device)
    return mixed_blend(images, ratio, alpha, None, torch.ones_like(ratio))


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_sharpness (uint8 in, uint8 out)."""
    return sharpness(images, ratio_alpha(factor, images.device)[1])


def sharpness(images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """TF.adjust_sharpness with per-sample ``alpha = 1 - factor`` ([n, 1, 1, 1] float32)."""
    n, c, h, w = images.shape
    if h <= 2 or w <= 2:
        return images
    out = images.to(torch.float32)
    # torchvision convolves with [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 and rounds. The exact value is
    # (3x3 sum + 4 * centre) / 13, whose fractional part j/13 is never within 0.038 of one half, so
    # the integer sums below round to the same values in any summation order (and are immune to
    # TF32 convolutions on GPUs).
    rows = out[..., :, :-2] + out[..., :, 1:-1] + out[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    view = out[..., 1:-1, 1:-1]
    blurred = box.add_(view, alpha=4.0).div_(13.0).round_()
    view.copy_(fma(view.clone(), blurred.sub_(view), alpha))
    return out.clamp_(0.0, UINT8_MAX).to(torch.uint8)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """rgb_to_grayscale (uint8, truncated) repeated to 3 channels."""
    return TF.rgb_to_grayscale(images, num_output_channels=3).contiguous()

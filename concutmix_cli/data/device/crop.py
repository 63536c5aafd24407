"""Crops: view 0's padded crop + flip, and views 1/2's resized crop + flip (PIL's resampling).

Both take per-sample boxes; the flip is folded into the gather indices, so each is one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from .constants import UINT8_MAX
from .shipping import Shippable


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              size: int, padding: int = 4) -> torch.Tensor:
    """Zero-pad by `padding`, crop `size` x `size` at (top, left) of the padded image, then flip
    the samples with flip=True; equals TF.hflip(TF.crop(TF.pad(img, padding), top, left, size, size))."""
    n, c, h, w = images.shape
    dev = images.device
    padded = nnf.pad(images, (padding, padding, padding, padding)) if padding > 0 else images
    ph, pw = h + 2 * padding, w + 2 * padding
    ar = torch.arange(size, device=dev)
    top = top.to(dev, torch.int64)
    left = left.to(dev, torch.int64)
    flip = flip.to(dev, torch.bool)
    rows = top[:, None] + ar  # [n, S]
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)  # [n, S]
    index = (rows[:, :, None] * pw + cols[:, None, :]).reshape(n, 1, size * size).expand(n, c, size * size)
    return padded.reshape(n, c, ph * pw).gather(2, index).reshape(n, c, size, size)


def _bilinear_axis(start: torch.Tensor, length: torch.Tensor, size: int):
    """torch's bilinear (align_corners=False) source indices/weights of a crop [start, start+length)
    resized to `size`, in absolute coordinates: (i0, i1, lambda1), each [n, size]."""
    scale = length.to(torch.float32) / float(size)  # area_pixel_compute_scale in float
    dst = torch.arange(size, dtype=torch.float32)
    src = (scale[:, None] * (dst[None, :] + 0.5) - 0.5).clamp_(min=0.0)
    i0 = torch.minimum(torch.floor(src).to(torch.int64), (length - 1)[:, None])
    lam = (src - i0.to(torch.float32)).clamp_(0.0, 1.0)
    i1 = i0 + (i0 < (length - 1)[:, None]).to(torch.int64)
    return i0 + start[:, None], i1 + start[:, None], lam


@dataclass
class ResizeTables(Shippable):
    """Per-sample interpolation tables of a resized crop (flip folded into the columns): source
    rows y0/y1 with weight ly of y1, source columns x0/x1 with weight lx of x1; each [n, size]."""

    y0: torch.Tensor
    y1: torch.Tensor
    ly: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    lx: torch.Tensor

    @staticmethod
    def build(top, left, height, width, flip, size: int) -> "ResizeTables":
        """On the CPU, from the boxes (top, left, height, width) and flips."""
        y0, y1, ly = _bilinear_axis(top.to(torch.int64), height.to(torch.int64), size)
        x0, x1, lx = _bilinear_axis(left.to(torch.int64), width.to(torch.int64), size)
        f = flip.to(torch.bool)[:, None]
        x0 = torch.where(f, x0.flip(1), x0)
        x1 = torch.where(f, x1.flip(1), x1)
        lx = torch.where(f, lx.flip(1), lx)
        return ResizeTables(y0, y1, ly, x0, x1, lx)


def resized_crop_apply(images: torch.Tensor, t: ResizeTables) -> torch.Tensor:
    """The resized crop with tables `t` on the images' device: uint8 [n, C, size, size]."""
    n, c, h, w = images.shape
    s = t.y0.shape[1]
    img = images.to(torch.float32)

    def rows(i):  # [n, c, s, w]
        return img.gather(2, i[:, None, :, None].expand(n, c, s, w))

    def cols(r, i):  # [n, c, s, s]
        return r.gather(3, i[:, None, None, :].expand(n, c, s, s))

    lx1 = t.lx[:, None, None, :]
    lx0 = 1.0 - lx1
    ly1 = t.ly[:, None, :, None]
    ly0 = 1.0 - ly1
    r0, r1 = rows(t.y0), rows(t.y1)
    # Horizontal pass, rounded to uint8 values, then vertical pass: PIL's two-pass resampling
    # (torchvision's uint8 resize does the same), so the result matches the loader path.
    # PIL rounds half up (fixed point plus one half), not half to even.
    top = cols(r0, t.x0).mul_(lx0).add_(cols(r0, t.x1).mul_(lx1)).add_(0.5).floor_()
    bot = cols(r1, t.x0).mul_(lx0).add_(cols(r1, t.x1).mul_(lx1)).add_(0.5).floor_()
    out = top.mul_(ly0).add_(bot.mul_(ly1))
    return out.add_(0.5).floor_().clamp_(0.0, UINT8_MAX).to(torch.uint8)

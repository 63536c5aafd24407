"""The typed stages of a step's plan: which samples an op touches and the parameters it reads.

Each stage is a small dataclass: `index` (the samples it applies to, in the batch) and the
per-sample tensors of its kernel; `run` applies the kernel to those samples only. A plan is a list
of stages applied in order; every tensor field travels to the device with `shipping.ship`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as TF

from . import blur, color, hue, lut, warp
from .shipping import Shippable


@dataclass
class Stage(Shippable):
    index: torch.Tensor  # int64 [k]: the samples this stage changes

    def run(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Warp(Stage):
    theta: torch.Tensor  # float32 [k, 3, 2], `warp.rescaled_theta`
    mode: str  # "nearest" or "bicubic"
    fill: float

    def run(self, images):
        return warp.affine_apply(images, self.theta, self.mode, self.fill)


@dataclass
class Lookup(Stage):
    luts: torch.Tensor  # uint8 [k, 256]

    def run(self, images):
        return lut.apply_luts(images, self.luts)


@dataclass
class Blend(Stage):
    weights: torch.Tensor  # float32 [k, 4]: ratio, alpha, gray weight, mean weight (`color.mixed_blend`)
    gray: bool  # does any sample need the gray image / the mean of it
    mean: bool

    def run(self, images):
        b = self.weights.view(-1, 4, 1, 1, 1)
        return color.mixed_blend(images, b[:, 0], b[:, 1], b[:, 2] if self.gray else None,
                                 b[:, 3] if self.mean else None)


@dataclass
class Sharpen(Stage):
    alpha: torch.Tensor  # float32 [k]: 1 - factor

    def run(self, images):
        return color.sharpness(images, self.alpha.view(-1, 1, 1, 1))


@dataclass
class AutoContrast(Stage):
    def run(self, images):
        return TF.autocontrast(images)


@dataclass
class Equalize(Stage):
    def run(self, images):
        return TF.equalize(images)


@dataclass
class HueShift(Stage):
    shift: torch.Tensor  # float32 [k]: fraction of the hue circle

    def run(self, images):
        return hue.hue(images, self.shift.view(-1, 1, 1))


@dataclass
class Gray(Stage):
    def run(self, images):
        return color.grayscale(images)


@dataclass
class Blur(Stage):
    kernels: torch.Tensor  # float32 [k, K]: 1-D Gaussian kernels (`blur.blur_kernels`)

    def run(self, images):
        return blur.blur_apply(images, self.kernels)


def run_stages(images: torch.Tensor, stages: Sequence[Stage]) -> torch.Tensor:
    """Apply the stages in order, each to its samples only (in place on `images`)."""
    for stage in stages:
        images.index_copy_(0, stage.index, stage.run(images.index_select(0, stage.index)))
    return images

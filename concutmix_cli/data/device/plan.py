"""A step's plan: from per-sample parameters (params.py) to the stages the kernels run (CPU side).

Samples that drew the same kind of op are grouped into one stage with per-sample parameters, so
a view costs a fixed handful of batched kernels, not one per image. Everything here is computed
on the CPU from the parameters alone; nothing reads the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import stages as S
from .autoaugment import NO_KERNEL, WARP_MODE, Kernel, PolicyVariants
from .blur import blur_kernels
from .crop import ResizeTables
from .params import ClassifyParams, ContrastParams
from .recipe import ViewRecipe
from .shipping import Shippable, ship


@dataclass
class CropFlip(Shippable):
    top: torch.Tensor  # int64 [n] offsets in the padded image
    left: torch.Tensor
    flip: torch.Tensor  # int64 [n], 1 = flip (int64: it travels in the same copy as the offsets)


@dataclass
class Plan:
    """One view's plan: the crop of every sample (`CropFlip` for view 0, `ResizeTables` for views
    1/2), then the stages, in order, each over its samples."""

    crop: CropFlip | ResizeTables
    stages: list[S.Stage]

    def ship(self, device: torch.device) -> "Plan":
        crop, *stages = ship([self.crop, *self.stages], device)
        return Plan(crop, stages)


_AA_STAGE = {
    Kernel.WARP_NEAREST: lambda i, t, v, fill: S.Warp(i, t.theta[v], WARP_MODE[Kernel.WARP_NEAREST], fill),
    Kernel.WARP_BICUBIC: lambda i, t, v, fill: S.Warp(i, t.theta[v], WARP_MODE[Kernel.WARP_BICUBIC], fill),
    Kernel.LUT: lambda i, t, v, fill: S.Lookup(i, t.lut[v]),
    Kernel.BLEND: lambda i, t, v, fill: S.Blend(i, t.blend[v], gray=True, mean=True),
    Kernel.SHARPNESS: lambda i, t, v, fill: S.Sharpen(i, t.sharp[v]),
    Kernel.AUTOCONTRAST: lambda i, t, v, fill: S.AutoContrast(i),
    Kernel.EQUALIZE: lambda i, t, v, fill: S.Equalize(i),
}


def _by_kernel(kernel: torch.Tensor) -> list[tuple[Kernel, torch.Tensor]]:
    """The samples of each kernel id in `kernel` ([n]; NO_KERNEL skipped), in `Kernel` order."""
    counts = torch.bincount(kernel + 1, minlength=len(Kernel) + 1).tolist()
    parts = torch.argsort(kernel, stable=True).split(counts)
    return [(k, parts[k + 1]) for k in Kernel if counts[k + 1]]


def plan_classify(params: ClassifyParams, variants: PolicyVariants, recipe: ViewRecipe) -> Plan:
    """View 0's plan: one stage per (AutoAugment slot, kernel) that some sample drew."""
    ops = params.aa_op.to(torch.int64)
    table, vid = variants.lookup(ops, params.aa_magnitude.to(torch.float64), recipe.image_size)
    kernel = torch.where(ops >= 0, table.kernel[vid], torch.full_like(vid, NO_KERNEL))  # [n, 2]
    stages = []
    for slot in range(2):  # the ops of one slot act on disjoint samples, so its stages commute
        for k, idx in _by_kernel(kernel[:, slot]):
            stages.append(_AA_STAGE[k](idx, table, vid[idx, slot], recipe.aa_fill))
    crop = CropFlip(params.top.to(torch.int64), params.left.to(torch.int64), params.flip.to(torch.int64))
    return Plan(crop, stages)


def _jitter_rounds(p: ContrastParams) -> list[tuple[int, S.Blend]]:
    """ColorJitter in each sample's own random order, as at most six blend rounds (round, stage).

    Each jittered sample applies hue exactly once, at step k (its position in `order`): k
    brightness/contrast/saturation steps before it and 3 - k after. So: three "pre-hue" rounds
    (round r touches the samples with k > r), the hue pass, three "post-hue" rounds (step k + 1 + r).
    Each round is one `color.mixed_blend` over the samples it touches, with per-sample weights."""
    n = p.order.shape[0]
    j = p.jitter.to(torch.bool)
    order = p.order.to(torch.int64)
    k = (order == 3).to(torch.int8).argmax(dim=1)  # position of hue
    r = torch.arange(3)
    pos = torch.cat((r.expand(n, 3), k[:, None] + 1 + r), dim=1)  # [n, 6] step of each round
    part = j[:, None] & torch.cat((k[:, None] > r, k[:, None] + 1 + r <= 3), dim=1)
    op = order.gather(1, pos.clamp(max=3))
    bright, con, sat = part & (op == 0), part & (op == 1), part & (op == 2)
    f = torch.where(bright, p.brightness[:, None],
                    torch.where(con, p.contrast[:, None], p.saturation[:, None])).double()
    f = torch.where(part, f, torch.ones_like(f))
    alpha = torch.where(bright | ~part, torch.zeros_like(f), 1.0 - f)
    blend = torch.stack((f, alpha, sat.double(), con.double()), dim=2).to(torch.float32)  # [n, 6, 4]
    flags = torch.stack((part.any(0), sat.any(0), con.any(0)), dim=1).tolist()  # [6][3]
    rounds = []
    for i, (any_part, any_sat, any_con) in enumerate(flags):
        if any_part:
            idx = part[:, i].nonzero().squeeze(1)
            rounds.append((i, S.Blend(idx, blend[idx, i], gray=bool(any_sat), mean=bool(any_con))))
    return rounds


def plan_contrast(params: ContrastParams, recipe: ViewRecipe) -> Plan:
    """Views 1/2's plan: jitter rounds around the hue pass, then grayscale, then blur."""
    resize = ResizeTables.build(params.top, params.left, params.height, params.width, params.flip,
                                recipe.image_size)
    rounds = _jitter_rounds(params)
    stages: list[S.Stage] = [stage for i, stage in rounds if i < 3]
    hidx = params.jitter.to(torch.bool).nonzero().squeeze(1)
    if hidx.numel():
        stages.append(S.HueShift(hidx, params.hue[hidx].to(torch.float32)))
    stages += [stage for i, stage in rounds if i >= 3]
    gidx = params.gray.nonzero().squeeze(1)
    if gidx.numel():
        stages.append(S.Gray(gidx))
    bidx = params.blur.nonzero().squeeze(1)
    if bidx.numel():
        stages.append(S.Blur(bidx, blur_kernels(params.sigma[bidx], recipe.blur_kernel)))
    return Plan(resize, stages)

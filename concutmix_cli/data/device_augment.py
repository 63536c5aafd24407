"""The CIFAR training views of docs/method-notes.md section 2, batched, on the training device.

`views.py` is the loader path: torchvision transforms applied to one PIL image at a time in
DataLoader workers. This module is its batched equivalent for data held as one uint8 tensor: it
takes a uint8 batch ``[N, 3, H, W]`` already on the device (GPU in practice, CPU works too) and
applies the same views with PER-SAMPLE random parameters, without a Python loop over images.

- view 0 (`DeviceViews.classify`): RandomCrop(size, padding 4, zero fill), horizontal flip p 0.5,
  AutoAugment with torchvision's CIFAR-10 policy (table and magnitudes read from torchvision itself)
  resampled as the reference does (`views.ReferenceAutoAugment`: shear bicubic, translate/rotate
  nearest, uncovered pixels grey 128), to [0, 1], normalize.
- views 1, 2 (`DeviceViews.contrast`): RandomResizedCrop(size, scale (0.2, 1), ratio (3/4, 4/3)),
  flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (per-sample random order of the four ops),
  grayscale p 0.2, Gaussian blur (kernel 13, sigma U(0.1, 2)) with p 0.5, to [0, 1], normalize.

Randomness: every random parameter is drawn on the CPU from the caller's ``torch.Generator``
(small per-sample tensors) and derived there (blend weights, affine matrices, lookup tables, blur
kernels, interpolation indices); the result is shipped to the images' device with one transfer per
dtype, with no host synchronization. The same generator state gives the same parameters on every
device, and every kernel avoids matmul/convolution on GPUs, so TF32 settings cannot change pixels.

Semantics are torchvision's tensor kernels on uint8 images (``torchvision.transforms.v2.functional``):
every operation reads uint8 and writes uint8 (rounded or truncated as torchvision does), as the PIL
path rounds to uint8 after each operation. Grouping: the samples that drew the same kind of
operation are processed together with per-sample parameters (AutoAugment: one nearest-neighbour
warp for translations and rotations, one bicubic warp for shears, one per-sample lookup table for Brightness/Posterize/Solarize/Invert,
one blend for Color/Contrast, Sharpness; AutoContrast and Equalize call torchvision on the group).
The resized crop reproduces PIL's two-pass bilinear resampling (so it equals the loader path).
Measured differences from the PIL path are listed in `PIL_DIFFERENCES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as nnf
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF

from .views import AUTOAUGMENT_FILL, BICUBIC_OPS, CIFAR_BLUR_KERNEL

__all__ = [
    "DeviceViews",
    "ClassifyParams",
    "ContrastParams",
    "AutoAugmentTable",
    "PIL_DIFFERENCES",
    "crop_flip",
    "resized_crop_flip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "adjust_sharpness",
    "posterize",
    "solarize",
    "grayscale",
    "gaussian_blur",
    "autoaugment_inverse_matrices",
    "affine_warp",
    "apply_autoaugment_op",
]

PIL_DIFFERENCES = (
    # Measured per operation on 128 CIFAR-100 images against torchvision's PIL ops (same parameters).
    "Identical to PIL: crop/pad/flip, the resized crop, AutoAugment Rotate/Translate (nearest, grey fill), "
    "Brightness, Posterize, Solarize, Invert, Equalize; Sharpness differs by one step in <0.2% of pixels.",
    "AutoAugment Shear is bicubic like PIL's, edge taps and grey fill placed as PIL places them, but with "
    "torch's cubic (a = -0.75; PIL's a = -0.5): mean absolute difference 0.6 uint8 step, 99% of values "
    "within 4 steps, at most about 11 (measured on 48 structured images; tests/test_device_augment.py).",
    "Blends follow torchvision's tensor arithmetic (truncation to uint8, grayscale 0.2989R+0.587G+0.114B "
    "truncated, float mean for contrast) where PIL rounds in fixed point (L = 299/587/114 rounded, "
    "contrast around the rounded integer mean of L): AutoAugment Color/Contrast are one uint8 step off "
    "in 15-50% of pixels (mean bias within +-0.5 step), contrast/saturation jitter in 10-13% (mean "
    "bias below 0.05 step), grayscale in ~55% (0.55 step darker on average), AutoContrast in ~3%.",
    "Hue: torchvision's float HSV rotation vs PIL's uint8 HSV (hue shift quantized to 1/255): up to "
    "9 steps off in ~20% of pixels, mean difference below 0.05 step.",
    "Gaussian blur is computed separably: one step off at rounding ties (~1e-5 of pixels).",
    "Random streams differ: the PIL path draws from the global torch RNG image by image; this path "
    "draws per-sample tensors from the given generator. Distributions are the same, samples are not.",
    "Inputs larger than image_size would be downscaled by the resized crop without PIL's antialias "
    "filter (not a CIFAR case: there the crop never exceeds the output size).",
)

_UINT8_MAX = 255.0

# AutoAugment operation names (torchvision's names); the geometric ones become affine warps with
# per-sample matrices: one bicubic warp for the shears, one nearest-neighbour warp for the rest.
_SHEARS = BICUBIC_OPS  # as views.ReferenceAutoAugment resamples them
_GEOMETRIC = _SHEARS + ("TranslateX", "TranslateY", "Rotate")
_AA_OPS = _GEOMETRIC + (
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
    "Identity",
)
_OP_ID = {name: i for i, name in enumerate(_AA_OPS)}

# ColorJitter operation order ids, as in torchvision's ColorJitter (fn_idx = randperm(4)).
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # order ids of ContrastParams.order


# --------------------------------------------------------------------------------------------
# AutoAugment table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoAugmentTable:
    """torchvision's AutoAugment policy as tensors: [P, 2] per (sub-policy, slot)."""

    op: torch.Tensor  # int64 op id (index into _AA_OPS)
    prob: torch.Tensor  # float64 probability of applying
    magnitude: torch.Tensor  # float64 unsigned magnitude (0 for ops without one)
    signed: torch.Tensor  # bool: negate with probability 0.5

    @property
    def num_policies(self) -> int:
        return int(self.op.shape[0])

    @staticmethod
    def from_torchvision(
        policy: AutoAugmentPolicy = AutoAugmentPolicy.CIFAR10, image_size: tuple[int, int] = (32, 32)
    ) -> "AutoAugmentTable":
        aa = AutoAugment(policy)
        policies = aa.policies
        space = aa._augmentation_space(10, image_size)  # noqa: SLF001 - the documented source of truth
        n = len(policies)
        op = torch.empty(n, 2, dtype=torch.int64)
        prob = torch.empty(n, 2, dtype=torch.float64)
        mag = torch.zeros(n, 2, dtype=torch.float64)
        signed = torch.zeros(n, 2, dtype=torch.bool)
        for p, sub in enumerate(policies):
            for s, (name, pr, bin_id) in enumerate(sub):
                if name not in _OP_ID:
                    raise ValueError(f"AutoAugment op {name!r} is not supported by the device path")
                magnitudes, is_signed = space[name]
                op[p, s] = _OP_ID[name]
                prob[p, s] = float(pr)
                # exactly what AutoAugment.forward does: float(magnitudes[bin].item())
                mag[p, s] = float(magnitudes[bin_id].item()) if bin_id is not None else 0.0
                signed[p, s] = bool(is_signed)
        return AutoAugmentTable(op, prob, mag, signed)


# --------------------------------------------------------------------------------------------
# Per-sample parameters (drawn on the CPU from the caller's generator)
# --------------------------------------------------------------------------------------------


class _Rows:
    """Per-sample parameter tables: every field is a tensor with one row per sample."""

    def cat(self, *others):
        """These rows followed by those of `others` (so several views go through one pass)."""
        parts = (self, *others)
        return type(self)(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(self)))


@dataclass
class ClassifyParams(_Rows):
    """Per-sample parameters of view 0 (CPU tensors, N rows)."""

    top: torch.Tensor  # int64, crop offset in the padded image, 0..H+2p-size
    left: torch.Tensor  # int64
    flip: torch.Tensor  # bool
    aa_op: torch.Tensor  # int64 [N, 2]: op id of each slot, -1 where the slot is not applied
    aa_magnitude: torch.Tensor  # float64 [N, 2]: signed magnitude

    def __len__(self) -> int:
        return int(self.top.shape[0])


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

    def __len__(self) -> int:
        return int(self.top.shape[0])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float32).uniform_(low, high, generator=generator)


def sample_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop.get_params, vectorized: (top, left, h, w) int64 [n]."""
    area = float(height * width)
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(
        torch.empty(n, attempts, dtype=torch.float64).uniform_(
            float(log_ratio[0]), float(log_ratio[1]), generator=generator
        )
    )
    w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)  # round half to even, like Python round
    h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid attempt
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # fallback (no valid attempt): torchvision's central crop with the ratio clamped
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1).to(torch.float64)).to(torch.int64).clamp_(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1).to(torch.float64)).to(torch.int64).clamp_(max=width - w)
    top = torch.where(any_ok, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(any_ok, left, torch.div(width - w, 2, rounding_mode="floor"))
    return top, left, h, w


# --------------------------------------------------------------------------------------------
# Batched kernels with per-sample parameters. Images are uint8 [n, C, H, W]; per-sample
# parameters are 1-D tensors of length n (moved to the images' device if needed).
# --------------------------------------------------------------------------------------------


def _col(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    return t.to(device=device, dtype=dtype).reshape(-1, 1, 1, 1)


def crop_flip(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    padding: int = 4,
) -> torch.Tensor:
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


def _resized_crop_tables(top, left, height, width, flip, size: int) -> dict[str, torch.Tensor]:
    """CPU-side interpolation tables for `_resized_crop_apply` (flip folded into the columns)."""
    y0, y1, ly = _bilinear_axis(top.to(torch.int64), height.to(torch.int64), size)
    x0, x1, lx = _bilinear_axis(left.to(torch.int64), width.to(torch.int64), size)
    f = flip.to(torch.bool)[:, None]
    x0 = torch.where(f, x0.flip(1), x0)
    x1 = torch.where(f, x1.flip(1), x1)
    lx = torch.where(f, lx.flip(1), lx)
    return {"y0": y0, "y1": y1, "ly": ly, "x0": x0, "x1": x1, "lx": lx}


def _resized_crop_apply(images: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    n, c, h, w = images.shape
    s = t["y0"].shape[1]
    img = images.to(torch.float32)

    def rows(i):  # [n, c, s, w]
        return img.gather(2, i[:, None, :, None].expand(n, c, s, w))

    def cols(r, i):  # [n, c, s, s]
        return r.gather(3, i[:, None, None, :].expand(n, c, s, s))

    lx1 = t["lx"][:, None, None, :]
    lx0 = 1.0 - lx1
    ly1 = t["ly"][:, None, :, None]
    ly0 = 1.0 - ly1
    r0, r1 = rows(t["y0"]), rows(t["y1"])
    # Horizontal pass, rounded to uint8 values, then vertical pass: PIL's two-pass resampling
    # (torchvision's uint8 resize does the same), so the result matches the loader path.
    # PIL rounds half up (fixed point plus one half), not half to even.
    top = cols(r0, t["x0"]).mul_(lx0).add_(cols(r0, t["x1"]).mul_(lx1)).add_(0.5).floor_()
    bot = cols(r1, t["x0"]).mul_(lx0).add_(cols(r1, t["x1"]).mul_(lx1)).add_(0.5).floor_()
    out = top.mul_(ly0).add_(bot.mul_(ly1))
    return out.add_(0.5).floor_().clamp_(0.0, _UINT8_MAX).to(torch.uint8)


def resized_crop_flip(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    flip: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Per-sample crop (top, left, height, width), bilinear resize to size x size, then horizontal
    flip: PIL's resampling for the CIFAR case (crop no larger than the output): pixel-centre aligned,
    edges clamped inside the crop, horizontal pass rounded to uint8 (half up), then vertical pass."""
    t = _resized_crop_tables(top.cpu(), left.cpu(), height.cpu(), width.cpu(), flip.cpu(), size)
    t = {k: v.to(images.device) for k, v in t.items()}
    return _resized_crop_apply(images, t)


def _gray_float(images: torch.Tensor) -> torch.Tensor:
    """torchvision's luma (0.2989, 0.587, 0.114) in float32, [n, 1, H, W], same op order."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def _ratio_alpha(factor: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor, 1 - factor) as float32 columns; 1 - factor is computed in the factor's own precision
    first (torchvision computes it in double from the Python float)."""
    f = factor if factor.is_floating_point() else factor.to(torch.float64)
    return _col(f, device, torch.float32), _col(1.0 - f, device, torch.float32)


def _fma(acc: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """float32 ``acc + t * alpha`` rounded once, as torch's ``add_(t, alpha=a)`` computes it (a fused
    multiply-add on CPU and CUDA); emulated exactly enough in float64. Devices without float64
    (MPS) get the twice-rounded float32 result, which differs by at most one uint8 step later."""
    if acc.device.type == "mps":
        return acc.add_(t.mul(alpha))
    return acc.double().add_(t.double().mul_(alpha.double())).float()


def _mixed_blend(
    images: torch.Tensor,
    ratio: torch.Tensor,
    alpha: torch.Tensor,
    w_gray: torch.Tensor | None,
    w_mean: torch.Tensor | None,
) -> torch.Tensor:
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
        x = _fma(x, other, alpha)
    return x.clamp_(0.0, _UINT8_MAX).to(torch.uint8)


def _pointwise_luts(op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 256] lookup tables of the AutoAugment ops that map each value on its own
    (Brightness, Posterize, Solarize, Invert; identity otherwise), torchvision arithmetic."""
    n = op.shape[0]
    v8 = torch.arange(256, dtype=torch.int64).expand(n, 256)
    vf = v8.to(torch.float32)
    m = magnitude.to(torch.float64)[:, None]
    lut = v8.clone()
    sel = (op == _OP_ID["Brightness"])[:, None]
    lut = torch.where(sel, vf.mul((1.0 + m).to(torch.float32)).clamp_(0.0, _UINT8_MAX).to(torch.int64), lut)
    sel = (op == _OP_ID["Posterize"])[:, None]
    bits = torch.trunc(m).to(torch.int64).clamp(0, 8)
    lut = torch.where(sel, v8 & (((1 << bits) - 1) << (8 - bits)), lut)
    sel = (op == _OP_ID["Solarize"])[:, None]
    lut = torch.where(sel & (vf >= m.to(torch.float32)), 255 - v8, lut)
    sel = (op == _OP_ID["Invert"])[:, None]
    lut = torch.where(sel, 255 - v8, lut)
    return lut.to(torch.uint8)


def _apply_luts(images: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    return luts.gather(1, images.reshape(n, -1).to(torch.int64)).view_as(images)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_brightness (uint8 in, uint8 out)."""
    ratio, _ = _ratio_alpha(factor, images.device)
    return _mixed_blend(images, ratio, torch.zeros_like(ratio), None, None)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_saturation (uint8 in, uint8 out)."""
    ratio, alpha = _ratio_alpha(factor, images.device)
    return _mixed_blend(images, ratio, alpha, torch.ones_like(ratio), None)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_contrast (uint8 in, uint8 out)."""
    ratio, alpha = _ratio_alpha(factor, images.device)
    return _mixed_blend(images, ratio, alpha, None, torch.ones_like(ratio))


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.adjust_sharpness (uint8 in, uint8 out)."""
    return _sharpness(images, _ratio_alpha(factor, images.device)[1])


def _sharpness(images, alpha):
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
    view.copy_(_fma(view.clone(), blurred.sub_(view), alpha))
    return out.clamp_(0.0, _UINT8_MAX).to(torch.uint8)


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


_HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))
_CONSTANTS: dict[tuple[str, torch.device], torch.Tensor] = {}


def _device_constant(name: str, device: torch.device) -> torch.Tensor:
    """Small constant tensors, made once per device (a fresh host-to-device copy of a pageable
    tensor would wait for the queued GPU work)."""
    key = (name, torch.device(device))
    if key not in _CONSTANTS:
        if name == "hsv_select":
            _CONSTANTS[key] = torch.tensor(_HSV_SELECT, dtype=torch.int64).to(device)
        else:  # pragma: no cover
            raise KeyError(name)
    return _CONSTANTS[key]


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
    select = _device_constant("hsv_select", img.device)  # [3, 6]
    index = select[:, i].moveaxis(0, -3)  # [n, 3, H, W]
    return vpqt.gather(-3, index)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample hue shift in [-0.5, 0.5] (fraction of the hue circle), torchvision semantics."""
    return _hue(images, factor.to(images.device, torch.float32).reshape(-1, 1, 1))


def _hue(images, shift):  # shift [n, 1, 1] float32
    x = images.to(torch.float32).mul_(1.0 / _UINT8_MAX)  # to_dtype(float32, scale=True)
    h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
    h = h.add(shift).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(_UINT8_MAX + 1.0 - 1e-3).to(torch.uint8)  # to_dtype(uint8, scale=True)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.posterize (keep the `bits` high bits)."""
    bits = torch.as_tensor(bits).cpu().to(torch.int64).reshape(-1).expand(images.shape[0])
    luts = _pointwise_luts(torch.full_like(bits, _OP_ID["Posterize"]), bits.to(torch.float64))
    return _apply_luts(images, luts.to(images.device))


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per-sample TF.solarize (invert values >= threshold)."""
    t = torch.as_tensor(threshold).cpu().to(torch.float64).reshape(-1).expand(images.shape[0])
    luts = _pointwise_luts(torch.full(t.shape, _OP_ID["Solarize"], dtype=torch.int64), t)
    return _apply_luts(images, luts.to(images.device))


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """rgb_to_grayscale (uint8, truncated) repeated to 3 channels."""
    return TF.rgb_to_grayscale(images, num_output_channels=3).contiguous()


def _blur_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernels (float32 linspace, softmax), one row per sigma."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=sigma.device)
    s = sigma.to(torch.float32)[:, None]
    return torch.softmax(x[None, :].div(s).pow(2).neg(), dim=1)


def _blur_apply(images: torch.Tensor, k1d: torch.Tensor, method: str | None = None) -> torch.Tensor:
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
    return x.round_().clamp_(0.0, _UINT8_MAX).to(torch.uint8)


def gaussian_blur(
    images: torch.Tensor, sigma: torch.Tensor, kernel_size: int = CIFAR_BLUR_KERNEL, method: str | None = None
) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur, reflect padding, rounded to uint8 (torchvision semantics;
    computed separably, so results may differ from the 2-D kernel by one step at rounding ties)."""
    if kernel_size % 2 == 0 or kernel_size <= 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    return _blur_apply(images, _blur_kernels(sigma.to(images.device), kernel_size), method)


def autoaugment_inverse_matrices(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse affine matrices [n, 6] (float64), torchvision's `_get_inverse_affine_matrix` for the
    AutoAugment geometric ops exactly as `autoaugment._apply_op` and `rotate` call it; `op` holds op ids."""
    op = op.to(torch.int64).cpu()
    m = magnitude.to(torch.float64).cpu()
    zero = torch.zeros_like(m)
    is_ = lambda name: op == _OP_ID[name]  # noqa: E731
    shear_x = torch.where(is_("ShearX"), torch.rad2deg(torch.atan(m)), zero)
    shear_y = torch.where(is_("ShearY"), torch.rad2deg(torch.atan(m)), zero)
    tx = torch.where(is_("TranslateX"), torch.trunc(m), zero)  # int(magnitude)
    ty = torch.where(is_("TranslateY"), torch.trunc(m), zero)
    angle = torch.where(is_("Rotate"), -torch.remainder(m, 360.0), zero)  # rotate: -(angle % 360)
    sheared = is_("ShearX") | is_("ShearY")  # _apply_op passes center=[0, 0] (top-left corner)
    cx = torch.where(sheared, torch.full_like(m, -0.5 * width), zero)
    cy = torch.where(sheared, torch.full_like(m, -0.5 * height), zero)

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


def _rescaled_theta(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [n, 3, 2] = theta^T / (w/2, h/2), as torchvision's _affine_grid computes it."""
    theta = matrices.to(torch.float32).reshape(-1, 2, 3)
    return theta.transpose(1, 2).div(torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32))


def _base_grid(height: int, width: int, device) -> torch.Tensor:
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(
        torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    return base.view(1, height * width, 3)


def _affine_apply(images: torch.Tensor, rescaled_theta: torch.Tensor, base: torch.Tensor | None = None,
                  mode: str = "nearest", fill: float = 0.0) -> torch.Tensor:
    n, c, h, w = images.shape
    if base is None:
        base = _base_grid(h, w, images.device)
    # base @ theta written out elementwise (no matmul, so no TF32 on GPUs); the third base
    # coordinate is 1.
    t = rescaled_theta
    grid = (base[..., 0:1] * t[:, None, 0, :]).add_(base[..., 1:2] * t[:, None, 1, :]).add_(t[:, None, 2, :])
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
    return out.round_().clamp_(0.0, _UINT8_MAX).to(torch.uint8)


def affine_warp(images: torch.Tensor, matrices: torch.Tensor, mode: str = "nearest",
                fill: float = AUTOAUGMENT_FILL) -> torch.Tensor:
    """Per-sample affine warp (`mode` nearest or bicubic), uncovered pixels `fill`; `matrices`
    [n, 6] are torchvision's inverse affine matrices (output pixel -> input pixel, centred)."""
    _, _, h, w = images.shape
    theta = _rescaled_theta(matrices.cpu(), h, w).to(images.device)
    return _affine_apply(images, theta, mode=mode, fill=float(fill))


def apply_autoaugment_op(name: str, images: torch.Tensor, magnitude: torch.Tensor,
                         fill: float = AUTOAUGMENT_FILL) -> torch.Tensor:
    """Apply AutoAugment op `name` to every image of a uint8 batch, with per-sample signed magnitudes
    (as `torchvision.transforms.autoaugment._apply_op` interprets them), resampled as
    `views.ReferenceAutoAugment` does: shears bicubic, translations/rotations nearest, `fill` grey."""
    n, _, h, w = images.shape
    m = torch.as_tensor(magnitude, dtype=torch.float64).cpu().reshape(-1).expand(n).contiguous()
    if name in _GEOMETRIC:
        op = torch.full((n,), _OP_ID[name], dtype=torch.int64)
        mode = "bicubic" if name in _SHEARS else "nearest"
        return affine_warp(images, autoaugment_inverse_matrices(op, m, h, w), mode, fill)
    op = torch.full((n,), _OP_ID.get(name, -1), dtype=torch.int64)
    if name in ("Brightness", "Posterize", "Solarize", "Invert"):
        return _apply_luts(images, _pointwise_luts(op, m).to(images.device))
    if name == "Color":
        return adjust_saturation(images, 1.0 + m)
    if name == "Contrast":
        return adjust_contrast(images, 1.0 + m)
    if name == "Sharpness":
        return adjust_sharpness(images, 1.0 + m)
    if name == "AutoContrast":
        return TF.autocontrast(images)
    if name == "Equalize":
        return TF.equalize(images)
    if name == "Identity":
        return images.clone()
    raise ValueError(f"unknown AutoAugment op {name!r}")


# The AutoAugment ops of one slot, as the groups the batched path applies them in.
_AA_GROUPS = ("affine", "shear", "lut", "blend", "Sharpness", "AutoContrast", "Equalize")
_AA_GROUP_OF_OP = {"TranslateX": 0, "TranslateY": 0, "Rotate": 0, "ShearX": 1, "ShearY": 1}
_AA_GROUP_OF_OP.update({"Brightness": 2, "Posterize": 2, "Solarize": 2, "Invert": 2, "Color": 3, "Contrast": 3,
                        "Sharpness": 4, "AutoContrast": 5, "Equalize": 6, "Identity": -1})


def _aa_variant_tables(op: torch.Tensor, magnitude: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Everything the batched AutoAugment needs per (op, signed magnitude) variant, on the CPU:
    group id, rescaled affine theta, value lookup table, blend weights, sharpness alpha."""
    op = op.to(torch.int64)
    m = magnitude.to(torch.float64)
    f = 1.0 + m
    return {
        "group": torch.tensor([_AA_GROUP_OF_OP[_AA_OPS[int(o)]] for o in op], dtype=torch.int64),
        "theta": _rescaled_theta(autoaugment_inverse_matrices(op, m, size, size), size, size),
        "lut": _pointwise_luts(op, m),
        # blend: ratio, alpha, gray weight (Color), mean weight (Contrast); [V, 4]
        "blend": torch.stack(
            (f, 1.0 - f, (op == _OP_ID["Color"]).double(), (op == _OP_ID["Contrast"]).double()), dim=1
        ).to(torch.float32),
        "sharp": (1.0 - f).to(torch.float32),  # sharpness alpha (1 - factor)
    }


# --------------------------------------------------------------------------------------------
# Shipping CPU parameters to the device in one transfer per dtype
# --------------------------------------------------------------------------------------------


def _ship(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return tensors
    out: dict[str, torch.Tensor] = {}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k, v in tensors.items():
        by_dtype.setdefault(v.dtype, []).append(k)
    for dtype, keys in by_dtype.items():
        flat = torch.cat([tensors[k].reshape(-1) for k in keys])
        moved = flat.to(device, non_blocking=True)
        for k, part in zip(keys, moved.split([tensors[k].numel() for k in keys])):
            out[k] = part.view(tensors[k].shape)
    return out


# --------------------------------------------------------------------------------------------
# The views
# --------------------------------------------------------------------------------------------


class DeviceViews:
    """CIFAR views of docs/method-notes.md section 2 on uint8 batches already on the training device.

    images: uint8 [N, 3, H, W] on any device; generator: a CPU torch.Generator from which all
    per-sample randomness is drawn. Outputs are float32 [N, 3, size, size], normalized, on the
    images' device.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int = 32,
        *,
        padding: int = 4,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int = CIFAR_BLUR_KERNEL,
        flip_p: float = 0.5,
        policy: AutoAugmentPolicy = AutoAugmentPolicy.CIFAR10,
        aa_fill: int = AUTOAUGMENT_FILL,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if blur_kernel % 2 == 0 or blur_kernel <= 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {blur_kernel}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        self.padding = int(padding)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        b, c, s, h = (float(v) for v in jitter)
        # torchvision ColorJitter ranges: [max(0, 1 - v), 1 + v], hue [-h, h]
        self.jitter_ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)
        self.blur_p = float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel = int(blur_kernel)
        self.flip_p = float(flip_p)
        self.aa_fill = float(aa_fill)
        self.aa_table = AutoAugmentTable.from_torchvision(policy, (self.image_size, self.image_size))
        t = self.aa_table
        pairs = sorted({(int(o), float(sm)) for o, mg, sg in zip(t.op.flatten(), t.magnitude.flatten(),
                                                                  t.signed.flatten())
                        for sm in ((float(mg), -float(mg)) if sg else (float(mg),))})
        self._aa_variants = {
            "op": torch.tensor([o for o, _ in pairs], dtype=torch.int64),
            "magnitude": torch.tensor([m for _, m in pairs], dtype=torch.float64),
        }
        self._aa_tables = _aa_variant_tables(self._aa_variants["op"], self._aa_variants["magnitude"],
                                             self.image_size)
        self._cache: dict[tuple, torch.Tensor] = {}

    # ---- helpers -------------------------------------------------------------------------

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] (ToTensor: divide by 255)."""
        return images.to(torch.float32).div(_UINT8_MAX)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel (Normalize)."""
        key = ("norm", x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = torch.tensor([self.mean, self.std], dtype=x.dtype, device=x.device).view(2, 1, 3, 1, 1)
        ms = self._cache[key]
        return x.sub(ms[0]).div_(ms[1])

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 views -> normalized float32 network input (ToTensor + Normalize)."""
        return self.normalize(self.to_unit(images))

    def _grid(self, h: int, w: int, device) -> torch.Tensor:
        key = ("grid", device, h, w)
        if key not in self._cache:
            self._cache[key] = _base_grid(h, w, device)
        return self._cache[key]

    @staticmethod
    def _check(images: torch.Tensor, generator: torch.Generator | None) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError("images must be a uint8 tensor [N, 3, H, W]")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator")

    # ---- parameter sampling (CPU) --------------------------------------------------------------

    def sample_classify(self, n: int, height: int, width: int, generator: torch.Generator) -> ClassifyParams:
        p, size = self.padding, self.image_size
        if height + 2 * p < size or width + 2 * p < size:
            raise ValueError(f"images of {height}x{width} with padding {p} are smaller than {size}")
        top = torch.randint(0, height + 2 * p - size + 1, (n,), generator=generator)
        left = torch.randint(0, width + 2 * p - size + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        t = self.aa_table
        policy = torch.randint(0, t.num_policies, (n,), generator=generator)
        probs = torch.rand(n, 2, generator=generator)
        signs = torch.randint(0, 2, (n, 2), generator=generator)
        active = probs <= t.prob[policy].to(torch.float32)  # AutoAugment: probs[i] <= p (float32)
        mag = t.magnitude[policy]
        mag = torch.where(t.signed[policy] & (signs == 0), -mag, mag)
        op = torch.where(active, t.op[policy], torch.full_like(policy[:, None].expand(n, 2), -1))
        return ClassifyParams(top, left, flip, op, mag)

    def sample_contrast(self, n: int, height: int, width: int, generator: torch.Generator) -> ContrastParams:
        top, left, h, w = sample_resized_crop_boxes(n, height, width, self.crop_scale, self.crop_ratio, generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        jitter = torch.rand(n, generator=generator) <= self.jitter_p  # RandomApply: skip if p < u
        order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)  # uniform permutation
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = self.jitter_ranges
        brightness = _uniform(n, b0, b1, generator)
        contrast = _uniform(n, c0, c1, generator)
        saturation = _uniform(n, s0, s1, generator)
        hue = _uniform(n, h0, h1, generator)
        gray = torch.rand(n, generator=generator) < self.gray_p
        blur = torch.rand(n, generator=generator) <= self.blur_p
        sigma = _uniform(n, self.blur_sigma[0], self.blur_sigma[1], generator)
        return ContrastParams(
            top, left, h, w, flip, jitter, order, brightness, contrast, saturation, hue, gray, blur, sigma
        )

    # ---- view 0 ---------------------------------------------------------------------------------

    def classify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """View 0: RandomCrop(size, padding, zero fill) + flip + AutoAugment CIFAR-10 (grey fill,
        bicubic shear) + normalize."""
        self._check(images, generator)
        n, _, h, w = images.shape
        params = self.sample_classify(n, h, w, generator)
        return self.finish(self.classify_uint8(images, params))

    def classify_uint8(self, images: torch.Tensor, params: ClassifyParams) -> torch.Tensor:
        """View 0 with given parameters, before to_unit/normalize: uint8 [N, 3, size, size]."""
        self._check(images, None)
        size = self.image_size
        n = images.shape[0]
        if n == 0:
            return images.new_empty((0, 3, size, size))
        cpu: dict[str, torch.Tensor] = {
            "top": params.top.to(torch.int64),
            "left": params.left.to(torch.int64),
            "flip": params.flip.to(torch.int64),
        }
        # Map every (op, signed magnitude) to a variant of the policy table (precomputed tables);
        # parameters from elsewhere get their variants built on the fly.
        ops = params.aa_op.to(torch.int64)
        mags = params.aa_magnitude.to(torch.float64)
        var = self._aa_variants
        tables = self._aa_tables
        active = ops >= 0
        match = (ops[..., None] == var["op"]) & (mags[..., None] == var["magnitude"])  # [n, 2, V]
        found = match.any(dim=-1)
        vid = match.to(torch.int8).argmax(dim=-1)
        if bool((active & ~found).any()):
            extra = active & ~found
            extra_op, extra_mag = ops[extra], mags[extra]
            tables = {k: torch.cat((v, w)) for (k, v), w in zip(
                tables.items(), _aa_variant_tables(extra_op, extra_mag, size).values())}
            vid = vid.clone()
            vid[extra] = len(var["op"]) + torch.arange(int(extra.sum()))
        group = torch.where(active, tables["group"][vid], torch.full_like(vid, -1))  # [n, 2]
        counts = torch.stack([torch.bincount(group[:, s] + 1, minlength=len(_AA_GROUPS) + 1) for s in range(2)])
        counts = counts.tolist()
        plan: list[tuple[str, str]] = []  # (op group, key prefix), in application order
        for slot in range(2):
            # Ops of one slot act on disjoint samples, so the groups commute.
            order = torch.argsort(group[:, slot], stable=True)
            parts = order.split(counts[slot])
            for gid, name in enumerate(_AA_GROUPS):
                idx = parts[gid + 1]
                if idx.numel() == 0:
                    continue
                key = f"{slot}.{name}"
                cpu[key + ".idx"] = idx
                v = vid[idx, slot]
                if name in ("affine", "shear"):
                    cpu[key + ".theta"] = tables["theta"][v]
                elif name == "lut":
                    cpu[key + ".lut"] = tables["lut"][v]
                elif name == "blend":
                    cpu[key + ".blend"] = tables["blend"][v]
                elif name == "Sharpness":
                    cpu[key + ".a"] = tables["sharp"][v]
                plan.append((name, key))

        d = _ship(cpu, images.device)
        x = crop_flip(images, d["top"], d["left"], d["flip"].bool(), size, self.padding)
        for name, key in plan:
            idx = d[key + ".idx"]
            sub = x.index_select(0, idx)
            if name in ("affine", "shear"):
                sub = _affine_apply(sub, d[key + ".theta"], self._grid(size, size, x.device),
                                    "bicubic" if name == "shear" else "nearest", self.aa_fill)
            elif name == "lut":
                sub = _apply_luts(sub, d[key + ".lut"])
            elif name == "blend":
                b = d[key + ".blend"].view(-1, 4, 1, 1, 1)
                sub = _mixed_blend(sub, b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            elif name == "Sharpness":
                sub = _sharpness(sub, d[key + ".a"].view(-1, 1, 1, 1))
            elif name == "AutoContrast":
                sub = TF.autocontrast(sub)
            elif name == "Equalize":
                sub = TF.equalize(sub)
            x.index_copy_(0, idx, sub)
        return x

    # ---- views 1, 2 ------------------------------------------------------------------------------

    def contrast(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Views 1/2: RandomResizedCrop + flip + ColorJitter (p 0.8) + grayscale (p 0.2)
        + Gaussian blur (p 0.5) + normalize."""
        self._check(images, generator)
        n, _, h, w = images.shape
        params = self.sample_contrast(n, h, w, generator)
        return self.finish(self.contrast_uint8(images, params))

    def contrast_uint8(self, images: torch.Tensor, params: ContrastParams) -> torch.Tensor:
        """Views 1/2 with given parameters, before to_unit/normalize: uint8 [N, 3, size, size]."""
        self._check(images, None)
        size = self.image_size
        n = images.shape[0]
        if n == 0:
            return images.new_empty((0, 3, size, size))
        cpu = {
            "rc." + k: v
            for k, v in _resized_crop_tables(
                params.top, params.left, params.height, params.width, params.flip, size
            ).items()
        }
        plan: list[tuple[str, str]] = []
        # ColorJitter in a random order per sample. Each jittered sample applies hue exactly once, at
        # step k (its position in `order`): k brightness/contrast/saturation steps before it and 3 - k
        # after. So: three "pre-hue" blend rounds (round r touches the samples with k > r), one hue
        # pass over all jittered samples, three "post-hue" rounds (step k + 1 + r). Per sample this is
        # exactly its own order; each round is one blend over the samples it touches, with
        # per-sample brightness / contrast / saturation parameters (`_mixed_blend`).
        j = params.jitter.to(torch.bool)
        order = params.order.to(torch.int64)
        k = (order == 3).to(torch.int8).argmax(dim=1)  # position of hue
        r = torch.arange(3)
        pos = torch.cat((r.expand(n, 3), k[:, None] + 1 + r), dim=1)  # [n, 6] step of each round
        part = j[:, None] & torch.cat((k[:, None] > r, k[:, None] + 1 + r <= 3), dim=1)
        op = order.gather(1, pos.clamp(max=3))
        bright, con, sat = part & (op == 0), part & (op == 1), part & (op == 2)
        f = torch.where(bright, params.brightness[:, None],
                        torch.where(con, params.contrast[:, None], params.saturation[:, None])).double()
        f = torch.where(part, f, torch.ones_like(f))
        alpha = torch.where(bright | ~part, torch.zeros_like(f), 1.0 - f)
        blend = torch.stack((f, alpha, sat.double(), con.double()), dim=2).to(torch.float32)  # [n, 6, 4]
        flags = torch.stack((part.any(0), sat.any(0), con.any(0)), dim=1).tolist()  # [6][3]
        rounds = []
        for i in range(6):
            if flags[i][0]:
                idx = part[:, i].nonzero().squeeze(1)
                cpu[f"jit{i}.idx"] = idx
                cpu[f"jit{i}.blend"] = blend[idx, i]
                rounds.append((i, f"jit{i}.{int(flags[i][1])}{int(flags[i][2])}"))
        plan += [("blend", key) for i, key in rounds if i < 3]
        hidx = j.nonzero().squeeze(1)
        if hidx.numel():
            cpu["hue.idx"] = hidx
            cpu["hue.f"] = params.hue[hidx].to(torch.float32)
            plan.append(("hue", "hue"))
        plan += [("blend", key) for i, key in rounds if i >= 3]
        gidx = params.gray.nonzero().squeeze(1)
        if gidx.numel():
            cpu["gray.idx"] = gidx
            plan.append(("gray", "gray"))
        bidx = params.blur.nonzero().squeeze(1)
        if bidx.numel():
            cpu["blur.idx"] = bidx
            cpu["blur.k"] = _blur_kernels(params.sigma[bidx], self.blur_kernel)
            plan.append(("blur", "blur"))

        d = _ship(cpu, images.device)
        x = _resized_crop_apply(images, {k[3:]: v for k, v in d.items() if k.startswith("rc.")})
        for name, key in plan:
            prefix, _, flags = key.partition(".")
            idx = d[prefix + ".idx"]
            sub = x.index_select(0, idx)
            if name == "blend":  # flags: does any sample of the round need gray / mean(gray)
                b = d[prefix + ".blend"].view(-1, 4, 1, 1, 1)
                sub = _mixed_blend(sub, b[:, 0], b[:, 1], b[:, 2] if flags[0] == "1" else None,
                                   b[:, 3] if flags[1] == "1" else None)
            elif name == "hue":
                sub = _hue(sub, d[key + ".f"].view(-1, 1, 1))
            elif name == "gray":
                sub = grayscale(sub)
            elif name == "blur":
                sub = _blur_apply(sub, d[key + ".k"])
            x.index_copy_(0, idx, sub)
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, padding={self.padding}, "
            f"mean={self.mean}, std={self.std})"
        )


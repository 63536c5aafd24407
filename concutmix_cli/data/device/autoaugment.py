"""View 0's AutoAugment: torchvision's CIFAR-10 policy as tensors, and which kernel runs each op.

The policy (sub-policies, probabilities, magnitude bins) is read from torchvision itself. Every
(op, signed magnitude) the policy can produce is a *variant* whose kernel parameters (warp matrix,
lookup table, blend weights, sharpness alpha) are tabulated once on the CPU (`PolicyVariants`);
a step only looks its samples' variants up. The resampling of each geometric op is chosen here,
once, from `views.BICUBIC_OPS` (the loader path's choice): shears bicubic, the rest nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF

from ..views import AUTOAUGMENT_FILL, BICUBIC_OPS
from . import color, lut, warp

# AutoAugment operation names (torchvision's names); an op id is an index into AA_OPS.
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
AA_OPS = GEOMETRIC + ("Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                      "AutoContrast", "Equalize", "Invert", "Identity")
OP_ID = {name: i for i, name in enumerate(AA_OPS)}


class Kernel(IntEnum):
    """The batched kernel an op runs in; the samples of one slot that share a kernel go together."""

    WARP_NEAREST = 0
    WARP_BICUBIC = 1
    LUT = 2
    BLEND = 3
    SHARPNESS = 4
    AUTOCONTRAST = 5
    EQUALIZE = 6


def resampling(op: str) -> str:
    """The interpolation of geometric op `op`, as the reference resamples it."""
    return "bicubic" if op in BICUBIC_OPS else "nearest"


WARP_MODE = {Kernel.WARP_NEAREST: "nearest", Kernel.WARP_BICUBIC: "bicubic"}
_KERNEL_OF_OP = {op: Kernel.WARP_BICUBIC if resampling(op) == "bicubic" else Kernel.WARP_NEAREST
                 for op in GEOMETRIC}
_KERNEL_OF_OP |= {"Brightness": Kernel.LUT, "Posterize": Kernel.LUT, "Solarize": Kernel.LUT, "Invert": Kernel.LUT,
                  "Color": Kernel.BLEND, "Contrast": Kernel.BLEND, "Sharpness": Kernel.SHARPNESS,
                  "AutoContrast": Kernel.AUTOCONTRAST, "Equalize": Kernel.EQUALIZE}  # Identity: none
_POINTWISE_OF_OP = {"Brightness": lut.Pointwise.BRIGHTNESS, "Posterize": lut.Pointwise.POSTERIZE,
                    "Solarize": lut.Pointwise.SOLARIZE, "Invert": lut.Pointwise.INVERT}
NO_KERNEL = -1


@dataclass(frozen=True)
class AutoAugmentTable:
    """torchvision's AutoAugment policy as tensors: [P, 2] per (sub-policy, slot)."""

    op: torch.Tensor  # int64 op id (index into AA_OPS)
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
        space = aa._augmentation_space(10, image_size)  # noqa: SLF001 - the documented source of truth
        n = len(aa.policies)
        op = torch.empty(n, 2, dtype=torch.int64)
        prob = torch.empty(n, 2, dtype=torch.float64)
        mag = torch.zeros(n, 2, dtype=torch.float64)
        signed = torch.zeros(n, 2, dtype=torch.bool)
        for p, sub in enumerate(aa.policies):
            for s, (name, pr, bin_id) in enumerate(sub):
                if name not in OP_ID:
                    raise ValueError(f"AutoAugment op {name!r} is not supported by the device path")
                magnitudes, is_signed = space[name]
                op[p, s] = OP_ID[name]
                prob[p, s] = float(pr)
                # exactly what AutoAugment.forward does: float(magnitudes[bin].item())
                mag[p, s] = float(magnitudes[bin_id].item()) if bin_id is not None else 0.0
                signed[p, s] = bool(is_signed)
        return AutoAugmentTable(op, prob, mag, signed)

    def variants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (op id, signed magnitude) the policy can produce, sorted: (op [V], magnitude [V])."""
        pairs = sorted({(int(o), float(sm)) for o, mg, sg in zip(self.op.flatten(), self.magnitude.flatten(),
                                                                  self.signed.flatten())
                        for sm in ((float(mg), -float(mg)) if sg else (float(mg),))})
        return (torch.tensor([o for o, _ in pairs], dtype=torch.int64),
                torch.tensor([m for _, m in pairs], dtype=torch.float64))


def autoaugment_inverse_matrices(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse affine matrices [n, 6] (float64), torchvision's `_get_inverse_affine_matrix` for the
    AutoAugment geometric ops exactly as `autoaugment._apply_op` and `rotate` call it; `op` holds op ids."""
    op = op.to(torch.int64).cpu()
    m = magnitude.to(torch.float64).cpu()
    zero = torch.zeros_like(m)
    is_ = lambda name: op == OP_ID[name]  # noqa: E731
    shear_x = torch.where(is_("ShearX"), torch.rad2deg(torch.atan(m)), zero)
    shear_y = torch.where(is_("ShearY"), torch.rad2deg(torch.atan(m)), zero)
    tx = torch.where(is_("TranslateX"), torch.trunc(m), zero)  # int(magnitude)
    ty = torch.where(is_("TranslateY"), torch.trunc(m), zero)
    angle = torch.where(is_("Rotate"), -torch.remainder(m, 360.0), zero)  # rotate: -(angle % 360)
    sheared = is_("ShearX") | is_("ShearY")  # _apply_op passes center=[0, 0] (top-left corner)
    cx = torch.where(sheared, torch.full_like(m, -0.5 * width), zero)
    cy = torch.where(sheared, torch.full_like(m, -0.5 * height), zero)
    return warp.inverse_affine_matrices(angle, tx, ty, shear_x, shear_y, cx, cy)


@dataclass(frozen=True)
class PolicyVariants:
    """Kernel parameters per (op, signed magnitude) variant, on the CPU, one row per variant."""

    op: torch.Tensor  # int64 [V] op id
    magnitude: torch.Tensor  # float64 [V] signed magnitude
    kernel: torch.Tensor  # int64 [V] `Kernel`, NO_KERNEL for Identity
    theta: torch.Tensor  # float32 [V, 3, 2] warp (`warp.rescaled_theta`)
    lut: torch.Tensor  # uint8 [V, 256] lookup table
    blend: torch.Tensor  # float32 [V, 4] `color.mixed_blend` ratio, alpha, gray weight, mean weight
    sharp: torch.Tensor  # float32 [V] sharpness alpha (1 - factor)

    @staticmethod
    def build(op: torch.Tensor, magnitude: torch.Tensor, size: int) -> "PolicyVariants":
        op = op.to(torch.int64)
        m = magnitude.to(torch.float64)
        f = 1.0 + m
        names = [AA_OPS[int(o)] for o in op]
        pointwise = [_POINTWISE_OF_OP.get(name, lut.Pointwise.IDENTITY) for name in names]
        blend = torch.stack((f, 1.0 - f, (op == OP_ID["Color"]).double(), (op == OP_ID["Contrast"]).double()), dim=1)
        return PolicyVariants(
            op, m,
            kernel=torch.tensor([_KERNEL_OF_OP.get(name, NO_KERNEL) for name in names], dtype=torch.int64),
            theta=warp.rescaled_theta(autoaugment_inverse_matrices(op, m, size, size), size, size),
            lut=lut.pointwise_luts(torch.tensor(pointwise, dtype=torch.int64), m),
            blend=blend.to(torch.float32),
            sharp=(1.0 - f).to(torch.float32),
        )

    def lookup(self, ops: torch.Tensor, mags: torch.Tensor, size: int) -> tuple["PolicyVariants", torch.Tensor]:
        """The variant id of every (op, magnitude) in `ops`/`mags` ([n, 2]; op -1: slot not applied,
        id 0 there). Pairs outside the table (parameters from elsewhere) get variants built on the
        fly, appended to the returned table."""
        active = ops >= 0
        match = (ops[..., None] == self.op) & (mags[..., None] == self.magnitude)  # [n, 2, V]
        vid = match.to(torch.int8).argmax(dim=-1)
        extra = active & ~match.any(dim=-1)
        if not bool(extra.any()):
            return self, vid
        more = PolicyVariants.build(ops[extra], mags[extra], size)
        table = PolicyVariants(*(torch.cat((getattr(self, k), getattr(more, k)))
                                 for k in self.__dataclass_fields__))
        vid = vid.clone()
        vid[extra] = len(self.op) + torch.arange(int(extra.sum()))
        return table, vid


def apply_autoaugment_op(name: str, images: torch.Tensor, magnitude: torch.Tensor,
                         fill: float = AUTOAUGMENT_FILL) -> torch.Tensor:
    """Apply AutoAugment op `name` to every image of a uint8 batch, with per-sample signed magnitudes
    (as `torchvision.transforms.autoaugment._apply_op` interprets them), resampled as
    `views.ReferenceAutoAugment` does: shears bicubic, translations/rotations nearest, `fill` grey."""
    n, _, h, w = images.shape
    m = torch.as_tensor(magnitude, dtype=torch.float64).cpu().reshape(-1).expand(n).contiguous()
    if name in GEOMETRIC:
        op = torch.full((n,), OP_ID[name], dtype=torch.int64)
        return warp.affine_warp(images, autoaugment_inverse_matrices(op, m, h, w), resampling(name), fill)
    if name in _POINTWISE_OF_OP:
        kind = torch.full((n,), _POINTWISE_OF_OP[name], dtype=torch.int64)
        return lut.apply_luts(images, lut.pointwise_luts(kind, m).to(images.device))
    by_name = {"Color": lambda: color.adjust_saturation(images, 1.0 + m),
               "Contrast": lambda: color.adjust_contrast(images, 1.0 + m),
               "Sharpness": lambda: color.adjust_sharpness(images, 1.0 + m),
               "AutoContrast": lambda: TF.autocontrast(images),
               "Equalize": lambda: TF.equalize(images),
               "Identity": images.clone}
    if name not in by_name:
        raise ValueError(f"unknown AutoAugment op {name!r}")
    return by_name[name]()

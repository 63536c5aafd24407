"""The training views of docs/method-notes.md section 2, as torchvision transforms on PIL images.

View 0 (classification) and views 1, 2 (contrastive, SimCLR style). This is the loader path:
per-image transforms in DataLoader workers. The `device` package has the batched equivalent that
runs on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.autoaugment import _apply_op

CIFAR_BLUR_KERNEL = 13
"""Odd kernel wide enough for sigma up to 2 (about +-3 sigma) on 32x32 images; PIL-style blur."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


AUTOAUGMENT_FILL = 128
"""Grey (128, 128, 128) for the pixels AutoAugment's geometric ops uncover, as in the reference's
CIFAR10Policy (torchvision's default is black)."""

BICUBIC_OPS = ("ShearX", "ShearY")
"""The AutoAugment ops the reference resamples bicubically (the rest: nearest)."""


class ReferenceAutoAugment(T.AutoAugment):
    """torchvision's AutoAugment (CIFAR-10 policy: the same 25 sub-policies, probabilities and
    magnitude bins) with the reference implementation's resampling: shear bicubic, translate and
    rotate nearest, every uncovered pixel grey (`AUTOAUGMENT_FILL`).

    torchvision applies one interpolation to every op; the reference (the widely copied
    DeepVoltaire CIFAR10Policy) shears with PIL's BICUBIC and translates/rotates with NEAREST.
    The random draws are torchvision's own (`get_params`), so only pixels differ from it.
    """

    def __init__(self, policy: T.AutoAugmentPolicy = T.AutoAugmentPolicy.CIFAR10,
                 fill: int = AUTOAUGMENT_FILL) -> None:
        super().__init__(policy, interpolation=InterpolationMode.NEAREST, fill=[fill] * 3)

    def forward(self, img):
        _, height, width = TF.get_dimensions(img)
        transform_id, probs, signs = self.get_params(len(self.policies))
        op_meta = self._augmentation_space(10, (height, width))
        fill = [float(f) for f in self.fill]
        for i, (op_name, p, magnitude_id) in enumerate(self.policies[transform_id]):
            if probs[i] <= p:
                magnitudes, signed = op_meta[op_name]
                magnitude = float(magnitudes[magnitude_id].item()) if magnitude_id is not None else 0.0
                if signed and signs[i] == 0:
                    magnitude *= -1.0
                mode = InterpolationMode.BICUBIC if op_name in BICUBIC_OPS else InterpolationMode.NEAREST
                img = _apply_op(img, op_name, magnitude, interpolation=mode, fill=fill)
        return img


@dataclass(frozen=True)
class ViewTransforms:
    """Callables PIL image -> normalized float tensor [3, H, W]."""

    classify: Callable
    contrast: Callable


DEFAULT_SIDE = {"cifar": 32, "imagenet": 224}
"""The side of each kind's views unless the data says otherwise (`PreparedData.view_side`: a
user's own images prepared with --image-size)."""

EVAL_CROP_FRACTION = 224 / 256
"""ImageNet-like evaluation: resize the shorter side to side / 0.875, center-crop the side (the
torchvision and timm references' 256 -> 224)."""


def classification_view(kind: str, mean: Sequence[float], std: Sequence[float],
                        size: int | None = None) -> T.Compose:
    size = size or DEFAULT_SIDE.get(kind, 0)
    if kind == "cifar":
        ops = [
            T.RandomCrop(size, padding=4),
            T.RandomHorizontalFlip(),
            ReferenceAutoAugment(T.AutoAugmentPolicy.CIFAR10),
        ]
    elif kind == "imagenet":
        ops = [
            T.RandomResizedCrop(size, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
            T.RandAugment(num_ops=2, magnitude=10),
        ]
    else:
        raise ValueError(f"unknown view kind {kind!r}")
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def contrastive_view(kind: str, mean: Sequence[float], std: Sequence[float],
                     size: int | None = None) -> T.Compose:
    size = size or DEFAULT_SIDE.get(kind, 0)
    if kind == "cifar":
        scale = (0.2, 1.0)
    elif kind == "imagenet":
        scale = (0.08, 1.0)
    else:
        raise ValueError(f"unknown view kind {kind!r}")
    ops = [
        T.RandomResizedCrop(size, scale=scale),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if kind == "cifar":
        ops.append(T.RandomApply([T.GaussianBlur(CIFAR_BLUR_KERNEL, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def training_views(kind: str, mean: Sequence[float], std: Sequence[float],
                   size: int | None = None) -> ViewTransforms:
    return ViewTransforms(classification_view(kind, mean, std, size),
                          contrastive_view(kind, mean, std, size))


def eval_resize(kind: str, size: int | None = None) -> list:
    """The geometric part of the evaluation transform (PIL in, PIL out): nothing for CIFAR-like
    views of stored arrays, resize + center crop for ImageNet-like ones."""
    if kind == "cifar":
        return []
    size = size or DEFAULT_SIDE[kind]
    return [T.Resize(int(round(size / EVAL_CROP_FRACTION))), T.CenterCrop(size)]


def eval_transform(kind: str, mean: Sequence[float], std: Sequence[float],
                   size: int | None = None) -> T.Compose:
    return T.Compose([*eval_resize(kind, size), T.ToTensor(), T.Normalize(mean, std)])


def array_resize(side: int) -> list:
    """How `prepare folder|csv` turns an image into a stored side x side array (and `predict` a
    new image for such a run): shorter side to `side` (bilinear, antialiased), center crop."""
    return [T.Resize(side), T.CenterCrop(side)]


def input_transform(preprocess: dict) -> T.Compose:
    """PIL image -> normalized model input of a trained run (`PreparedData.preprocess`): stored
    arrays were made by `array_resize`, files go through the evaluation transform."""
    if preprocess["kind"] == "arrays":
        geometry = array_resize(int(preprocess["side"]))
    else:
        geometry = eval_resize(preprocess["views"], int(preprocess["side"]))
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])])

"""The training views of METHOD.md section 2, as torchvision transforms on PIL images.

View 0 (classification) and views 1, 2 (contrastive, SimCLR style). This is the loader path:
per-image transforms in DataLoader workers. `device_augment.py` has the batched equivalent that
runs on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torchvision import transforms as T

CIFAR_BLUR_KERNEL = 13
"""Odd kernel wide enough for sigma up to 2 (about +-3 sigma) on 32x32 images; PIL-style blur."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewTransforms:
    """Callables PIL image -> normalized float tensor [3, H, W]."""

    classify: Callable
    contrast: Callable


def classification_view(kind: str, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    if kind == "cifar":
        ops = [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        ]
    elif kind == "imagenet":
        ops = [
            T.RandomResizedCrop(224, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
            T.RandAugment(num_ops=2, magnitude=10),
        ]
    else:
        raise ValueError(f"unknown view kind {kind!r}")
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def contrastive_view(kind: str, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    if kind == "cifar":
        size, scale = 32, (0.2, 1.0)
    elif kind == "imagenet":
        size, scale = 224, (0.08, 1.0)
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


def training_views(kind: str, mean: Sequence[float], std: Sequence[float]) -> ViewTransforms:
    return ViewTransforms(classification_view(kind, mean, std), contrastive_view(kind, mean, std))


def eval_transform(kind: str, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    if kind == "cifar":
        return T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])

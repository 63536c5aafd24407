"""The numbers of the CIFAR views (docs/method-notes.md section 2), checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torchvision.transforms import AutoAugmentPolicy

from ..views import AUTOAUGMENT_FILL, CIFAR_BLUR_KERNEL
from .autoaugment import AutoAugmentTable


@dataclass(frozen=True)
class ViewRecipe:
    """View 0: RandomCrop(image_size, padding, zero fill), flip, AutoAugment(policy, fill aa_fill).
    Views 1/2: RandomResizedCrop(crop_scale, crop_ratio), flip, ColorJitter(jitter) with p
    jitter_p, grayscale p gray_p, Gaussian blur (blur_kernel, sigma U(blur_sigma)) with p blur_p.
    Both: to [0, 1], normalize(mean, std)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int = 32
    padding: int = 4
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = CIFAR_BLUR_KERNEL
    flip_p: float = 0.5
    policy: AutoAugmentPolicy = AutoAugmentPolicy.CIFAR10
    aa_fill: float = float(AUTOAUGMENT_FILL)
    aa_table: AutoAugmentTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if self.blur_kernel % 2 == 0 or self.blur_kernel <= 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        size = int(self.image_size)
        object.__setattr__(self, "aa_table", AutoAugmentTable.from_torchvision(self.policy, (size, size)))

    @staticmethod
    def of(mean: Sequence[float], std: Sequence[float], image_size: int = 32, **settings) -> "ViewRecipe":
        """A recipe with every number converted to its type (int sizes, float probabilities)."""
        floats = lambda v: tuple(float(x) for x in v)  # noqa: E731
        convert = {"padding": int, "blur_kernel": int, "crop_scale": floats, "crop_ratio": floats, "jitter": floats,
                   "blur_sigma": floats, "jitter_p": float, "gray_p": float, "blur_p": float, "flip_p": float,
                   "aa_fill": float}
        settings = {k: convert[k](v) if k in convert else v for k, v in settings.items()}
        return ViewRecipe(floats(mean), floats(std), int(image_size), **settings)

    @property
    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        """torchvision ColorJitter ranges: [max(0, 1 - v), 1 + v] for brightness, contrast,
        saturation, [-h, h] for hue."""
        b, c, s, h = self.jitter
        return (max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)

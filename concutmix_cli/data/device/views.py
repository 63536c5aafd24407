"""`DeviceViews`: the CIFAR training views on uint8 batches on the training device.

Each view is parameters (params.py, CPU) -> plan (plan.py, CPU) -> shipped to the device in a few
copies -> the crop kernel over the whole batch, then the plan's stages, each over its samples
(stages.py) -> to [0, 1] and normalized.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import AutoAugmentPolicy

from ..views import AUTOAUGMENT_FILL, CIFAR_BLUR_KERNEL
from .autoaugment import AutoAugmentTable, PolicyVariants
from .constants import UINT8_MAX, device_constant
from .crop import crop_flip, resized_crop_apply
from .params import ClassifyParams, ContrastParams, sample_classify, sample_contrast
from .plan import plan_classify, plan_contrast
from .recipe import ViewRecipe
from .stages import run_stages


class DeviceViews:
    """CIFAR views of docs/method-notes.md section 2 on uint8 batches already on the training device.

    images: uint8 [N, 3, H, W] on any device; generator: a CPU torch.Generator from which all
    per-sample randomness is drawn. Outputs are float32 [N, 3, size, size], normalized, on the
    images' device. The keyword settings are `ViewRecipe`'s.
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
        self.recipe = ViewRecipe.of(
            mean, std, image_size, padding=padding, crop_scale=crop_scale, crop_ratio=crop_ratio, jitter=jitter,
            jitter_p=jitter_p, gray_p=gray_p, blur_p=blur_p, blur_sigma=blur_sigma, blur_kernel=blur_kernel,
            flip_p=flip_p, policy=policy, aa_fill=aa_fill)
        self.variants = PolicyVariants.build(*self.aa_table.variants(), self.image_size)

    @property
    def image_size(self) -> int:
        return self.recipe.image_size

    @property
    def aa_table(self) -> AutoAugmentTable:
        return self.recipe.aa_table

    # ---- uint8 -> network input ------------------------------------------------------------

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] (ToTensor: divide by 255)."""
        return images.to(torch.float32).div(UINT8_MAX)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel (Normalize)."""
        mean, std = self.recipe.mean, self.recipe.std
        ms = device_constant(("normalize", mean, std, x.dtype), x.device,
                             lambda d: torch.tensor([mean, std], dtype=x.dtype, device=d).view(2, 1, 3, 1, 1))
        return x.sub(ms[0]).div_(ms[1])

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 views -> normalized float32 network input (ToTensor + Normalize)."""
        return self.normalize(self.to_unit(images))

    @staticmethod
    def _check(images: torch.Tensor, generator: torch.Generator | None) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError("images must be a uint8 tensor [N, 3, H, W]")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator")

    # ---- parameters (CPU) --------------------------------------------------------------------

    def sample_classify(self, n: int, height: int, width: int, generator: torch.Generator) -> ClassifyParams:
        return sample_classify(self.recipe, n, height, width, generator)

    def sample_contrast(self, n: int, height: int, width: int, generator: torch.Generator) -> ContrastParams:
        return sample_contrast(self.recipe, n, height, width, generator)

    # ---- view 0 ---------------------------------------------------------------------------------

    def classify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """View 0: RandomCrop(size, padding, zero fill) + flip + AutoAugment CIFAR-10 (grey fill,
        bicubic shear) + normalize."""
        self._check(images, generator)
        n, _, h, w = images.shape
        return self.finish(self.classify_uint8(images, self.sample_classify(n, h, w, generator)))

    def classify_uint8(self, images: torch.Tensor, params: ClassifyParams) -> torch.Tensor:
        """View 0 with given parameters, before to_unit/normalize: uint8 [N, 3, size, size]."""
        self._check(images, None)
        size = self.image_size
        if images.shape[0] == 0:
            return images.new_empty((0, 3, size, size))
        plan = plan_classify(params, self.variants, self.recipe).ship(images.device)
        x = crop_flip(images, plan.crop.top, plan.crop.left, plan.crop.flip, size, self.recipe.padding)
        return run_stages(x, plan.stages)

    # ---- views 1, 2 ------------------------------------------------------------------------------

    def contrast(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Views 1/2: RandomResizedCrop + flip + ColorJitter (p 0.8) + grayscale (p 0.2)
        + Gaussian blur (p 0.5) + normalize."""
        self._check(images, generator)
        n, _, h, w = images.shape
        return self.finish(self.contrast_uint8(images, self.sample_contrast(n, h, w, generator)))

    def contrast_uint8(self, images: torch.Tensor, params: ContrastParams) -> torch.Tensor:
        """Views 1/2 with given parameters, before to_unit/normalize: uint8 [N, 3, size, size]."""
        self._check(images, None)
        if images.shape[0] == 0:
            return images.new_empty((0, 3, self.image_size, self.image_size))
        plan = plan_contrast(params, self.recipe).ship(images.device)
        return run_stages(resized_crop_apply(images, plan.crop), plan.stages)

    def __repr__(self) -> str:
        r = self.recipe
        return f"{type(self).__name__}(image_size={r.image_size}, padding={r.padding}, mean={r.mean}, std={r.std})"

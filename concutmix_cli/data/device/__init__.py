"""The CIFAR training views of docs/method-notes.md section 2, batched, on the training device.

`data/views.py` is the loader path: torchvision transforms applied to one PIL image at a time in
DataLoader workers. This package is its batched equivalent for data held as one uint8 tensor: it
takes a uint8 batch ``[N, 3, H, W]`` already on the device (GPU in practice, CPU works too) and
applies the same views with PER-SAMPLE random parameters, without a Python loop over images.

- view 0 (`DeviceViews.classify`): RandomCrop(size, padding 4, zero fill), horizontal flip p 0.5,
  AutoAugment with torchvision's CIFAR-10 policy (table and magnitudes read from torchvision itself)
  resampled as the reference does (`views.ReferenceAutoAugment`: shear bicubic, translate/rotate
  nearest, uncovered pixels grey 128), to [0, 1], normalize.
- views 1, 2 (`DeviceViews.contrast`): RandomResizedCrop(size, scale (0.2, 1), ratio (3/4, 4/3)),
  flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (per-sample random order of the four ops),
  grayscale p 0.2, Gaussian blur (kernel 13, sigma U(0.1, 2)) with p 0.5, to [0, 1], normalize.

One view, in one direction through the modules:

    recipe.py       the numbers of the views (probabilities, ranges, sizes, fill), checked once
    params.py       per-sample random parameters, drawn on the CPU from the caller's generator
    autoaugment.py  torchvision's policy as tensors; which kernel (and resampling) runs each op
    plan.py         parameters -> typed stages (stages.py): the samples of each op kind together
    shipping.py     the plan's tensors to the images' device, one copy per dtype, no host sync
    crop.py, warp.py, color.py, lut.py, hue.py, blur.py
                    the kernels: uint8 in, uint8 out, torchvision's arithmetic, per-sample
                    parameters; change one op by editing its kernel file
    constants.py    the one cache of per-device constant tensors
    views.py        `DeviceViews`: recipe -> params -> plan -> kernels -> normalized float32

Randomness: every random parameter is drawn on the CPU from the caller's ``torch.Generator``
and derived there (blend weights, affine matrices, lookup tables, blur kernels, interpolation
indices), so the same generator state gives the same parameters on every device, and the
kernels avoid matmul/convolution on GPUs, so TF32 settings cannot change pixels. Semantics are
torchvision's tensor kernels on uint8 images: every operation reads uint8 and writes uint8
(rounded or truncated as torchvision does), as the PIL path rounds after each operation; the
resized crop reproduces PIL's two-pass bilinear resampling. Measured differences from the PIL
path are listed in `PIL_DIFFERENCES`.
"""

from .params import ClassifyParams, ContrastParams
from .views import DeviceViews

__all__ = ["DeviceViews", "ClassifyParams", "ContrastParams", "PIL_DIFFERENCES"]

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

#!/usr/bin/env python
"""How strongly does view 0's AutoAugment change an image, in each implementation?

The mean absolute change |AA(x) - x| (uint8 steps, over every pixel and channel) of AutoAugment
alone (no crop, no flip) on real CIFAR-100-LT training images, for:
- device: our batched kernels (`data/device`, the default training path);
- loader: `views.ReferenceAutoAugment` on PIL images (torchvision's policy and draws, the
  reference's fill and resampling);
- torchvision: `T.AutoAugment(CIFAR10)` as shipped (black fill, nearest everywhere);
- authors: the semantics of the CIFAR10Policy the authors' main.py uses (the widely copied
  DeepVoltaire implementation), written here from its description: the same 25 sub-policies,
  probabilities and bins, but Rotate always by +magnitude (no random sign), TranslateX/Y by
  magnitude x size pixels (150/331 x 32 = 14.5 at bin 9; not truncated to whole pixels, PIL
  nearest), Solarize thresholds from linspace(256, 0, 10), grey fill, shears bicubic;
- and the authors' semantics with one difference undone at a time (translate truncated, rotate
  signed, solarize from 255), to say which one accounts for a gap.

    python benchmarks/autoaugment_strength.py --data data/cifar100-lt-if100-seed10 --images 4096 --seeds 3

Prints one row per implementation (mean over the seeds, and the spread) and, with --json, one
JSON object last.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from argtypes import Parser, positive  # noqa: E402 (beside this file)
from torchvision import transforms as T  # noqa: E402

from concutmix_cli.data.device.views import DeviceViews  # noqa: E402
from concutmix_cli.data.views import AUTOAUGMENT_FILL, ReferenceAutoAugment  # noqa: E402

GREY = (AUTOAUGMENT_FILL,) * 3


class AuthorsPolicy:
    """The authors' CIFAR10Policy semantics (module docstring); `truncate_translate`,
    `signed_rotate` and `solarize_from` undo one difference from torchvision's at a time."""

    def __init__(self, truncate_translate: bool = False, signed_rotate: bool = False,
                 solarize_from: float = 256.0):
        self.policies = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10).policies  # the same table
        self.truncate_translate, self.signed_rotate = truncate_translate, signed_rotate
        self.bins = {
            "ShearX": np.linspace(0, 0.3, 10), "ShearY": np.linspace(0, 0.3, 10),
            "TranslateX": np.linspace(0, 150 / 331, 10), "TranslateY": np.linspace(0, 150 / 331, 10),
            "Rotate": np.linspace(0, 30, 10), "Solarize": np.linspace(solarize_from, 0, 10),
            "Posterize": np.round(np.linspace(8, 4, 10)).astype(int),
            **{name: np.linspace(0.0, 0.9, 10) for name in ("Color", "Contrast", "Sharpness", "Brightness")},
        }

    def __call__(self, img: Image.Image) -> Image.Image:
        for name, p, bin_id in self.policies[random.randrange(len(self.policies))]:
            if random.random() < p:
                img = self.apply(img, name, None if bin_id is None else self.bins[name][bin_id])
        return img

    def apply(self, img: Image.Image, name: str, m) -> Image.Image:
        sign = random.choice((-1, 1))
        w, h = img.size
        if name in ("ShearX", "ShearY"):
            matrix = (1, m * sign, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, m * sign, 1, 0)
            return img.transform(img.size, Image.AFFINE, matrix, Image.BICUBIC, fillcolor=GREY)
        if name in ("TranslateX", "TranslateY"):
            shift = m * (w if name == "TranslateX" else h) * sign
            shift = float(int(shift)) if self.truncate_translate else shift
            matrix = (1, 0, shift, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, shift)
            return img.transform(img.size, Image.AFFINE, matrix, fillcolor=GREY)
        if name == "Rotate":
            turned = img.convert("RGBA").rotate(m * sign if self.signed_rotate else m)
            return Image.composite(turned, Image.new("RGBA", turned.size, (AUTOAUGMENT_FILL,) * 4),
                                   turned).convert(img.mode)
        enhance = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                   "Sharpness": ImageEnhance.Sharpness, "Brightness": ImageEnhance.Brightness}
        if name in enhance:
            return enhance[name](img).enhance(1 + m * sign)
        return {"Posterize": lambda: ImageOps.posterize(img, int(m)),
                "Solarize": lambda: ImageOps.solarize(img, m),
                "AutoContrast": lambda: ImageOps.autocontrast(img),
                "Equalize": lambda: ImageOps.equalize(img),
                "Invert": lambda: ImageOps.invert(img)}[name]()


def pil_change(images: torch.Tensor, transform, seed: int) -> float:
    """Mean |transform(x) - x| over `images` (uint8 [N, H, W, 3]) with Python's and torch's
    generators seeded."""
    random.seed(seed)
    torch.manual_seed(seed)
    total = 0.0
    for array in images.numpy():
        out = np.asarray(transform(Image.fromarray(array)), dtype=np.float32)
        total += float(np.abs(out - array.astype(np.float32)).mean())
    return total / len(images)


def device_change(images: torch.Tensor, seed: int) -> float:
    views = DeviceViews((0.5,) * 3, (0.5,) * 3, images.shape[1], padding=0, flip_p=0.0)
    x = images.permute(0, 3, 1, 2).contiguous()
    params = views.sample_classify(len(x), x.shape[2], x.shape[3], torch.Generator().manual_seed(seed))
    return float((views.classify_uint8(x, params).float() - x.float()).abs().mean())


def main(argv=None) -> dict:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data" / "cifar100-lt-if100-seed10",
                   help="a prepared CIFAR folder (train.safetensors)")
    p.add_argument("--images", type=positive(int), default=4096, help="the first N training images")
    p.add_argument("--seeds", type=positive(int), default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not (args.data / "train.safetensors").is_file():
        p.error(f"--data {args.data}: no train.safetensors there (a folder `concutmix prepare` made)")
    from safetensors.torch import load_file

    images = load_file(str(args.data / "train.safetensors"))["images"][: args.images]
    rows = {
        "device (ours, training default)": lambda s: device_change(images, s),
        "loader (ours, ReferenceAutoAugment)": lambda s: pil_change(images, ReferenceAutoAugment(), s),
        "torchvision AutoAugment as shipped": lambda s: pil_change(
            images, T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), s),
        "authors' CIFAR10Policy semantics": lambda s: pil_change(images, AuthorsPolicy(), s),
        "  ... translate truncated to whole pixels": lambda s: pil_change(
            images, AuthorsPolicy(truncate_translate=True), s),
        "  ... rotate with a random sign": lambda s: pil_change(images, AuthorsPolicy(signed_rotate=True), s),
        "  ... solarize thresholds from 255": lambda s: pil_change(images, AuthorsPolicy(solarize_from=255.0), s),
        "  ... all three (torchvision's semantics)": lambda s: pil_change(images, AuthorsPolicy(
            truncate_translate=True, signed_rotate=True, solarize_from=255.0), s),
    }
    result = {"images": len(images), "seeds": args.seeds, "data": str(args.data), "rows": {}}
    for name, measure in rows.items():
        values = [measure(seed) for seed in range(args.seeds)]
        result["rows"][name] = {"mean": statistics.mean(values), "values": values}
        print(f"{name:45s} {statistics.mean(values):6.2f}  ({min(values):.2f}-{max(values):.2f})",
              file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

#!/usr/bin/env python
"""Does kornia serve as the device path's augmentation? Our device views against kornia 0.9's.

The same views of one ConCutMix step at a batch size B, made the way `DeviceBatches` makes them:
view 0 of the batch and of its foreground batch in one pass (2B images: RandomCrop(32, pad 4),
flip, AutoAugment CIFAR-10), views 1 and 2 in one pass (2B images: RandomResizedCrop, flip,
ColorJitter p 0.8, grayscale p 0.2, Gaussian blur p 0.5), then to [0, 1] and normalized. Kornia
gets its closest configuration: `kornia.augmentation` modules and `auto.AutoAugment("cifar10")`
(as shipped, and with the sub-policy drawn per sample by splitting the batch by sub-policy).

Measured, on CIFAR-100-LT images:
- milliseconds per step (median of --steps, each timed alone) and ATen operations dispatched
  per step (all, and those that launch a kernel);
- host syncs: operations that read a value computed from the pixels back to the host (`item`,
  `bool`, `nonzero`, masked indexing, ...); each one stalls a GPU and breaks CUDA-graph capture;
- the statistical parity test of tests/test_device_augment.py (channel means/stds, zero padding,
  grey fill, gray fraction) against torchvision's PIL loader path, as gap / tolerance;
- per operation, with the same parameters: mean absolute difference (uint8 steps) and the
  fraction of differing values against torchvision's op (the reference of our parity tests);
- the CIFAR-10 policy itself: kornia's table against torchvision's.

    OMP_NUM_THREADS=1 python benchmarks/kornia_vs_device.py --data data/cifar100-lt-if100 --json

Needs the extras `kornia` and `test`: pip install -e '.[kornia,test]'.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

try:
    import kornia
    import kornia.augmentation as K
    from kornia.augmentation.auto import AutoAugment as KorniaAutoAugment
except ImportError:  # pragma: no cover - depends on the environment
    print("error: this benchmark needs the 'kornia' extra: pip install -e '.[kornia,test]'", file=sys.stderr)
    sys.exit(2)

from torchvision.transforms import AutoAugment, AutoAugmentPolicy  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from concutmix_cli.data.device import DeviceViews  # noqa: E402
from concutmix_cli.data.device import autoaugment as aa  # noqa: E402
from concutmix_cli.data.prepared import load_prepared  # noqa: E402
from test_device_augment import (  # noqa: E402  the parity tests' own references and tolerances
    MEAN,
    STD,
    TOLERANCE,
    pil_views,
    tv_autoaugment_op,
    view_stats,
)
from views_overhead import CountOps, emit  # noqa: E402

GREY = 128 / 255


# ----------------------------------------------------------------------------------------------
# the two implementations of one step's views
# ----------------------------------------------------------------------------------------------


def ours(dv: DeviceViews):
    def step(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator):
        n, _, h, w = a.shape
        p0, p1, p2, pf = (dv.sample_classify(n, h, w, gen), dv.sample_contrast(n, h, w, gen),
                          dv.sample_contrast(n, h, w, gen), dv.sample_classify(len(b), h, w, gen))
        v0 = dv.finish(dv.classify_uint8(torch.cat((a, b)), p0.cat(pf)))
        v12 = dv.finish(dv.contrast_uint8(a.repeat(2, 1, 1, 1), p1.cat(p2)))
        return v0, v12
    return step


class PerSamplePolicy(torch.nn.Module):
    """kornia's AutoAugment with the sub-policy drawn per sample (torchvision's behaviour): the
    batch split by sub-policy, each part through its own sub-policy."""

    def __init__(self, policy: KorniaAutoAugment):
        super().__init__()
        self.policy = policy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        which = torch.randint(0, len(self.policy), (x.shape[0],))
        out = x.clone()
        for i in range(len(self.policy)):
            idx = (which == i).nonzero().squeeze(1)  # CPU draws: no sync
            if idx.numel():
                sub = self.policy.get_children_by_indices(torch.tensor([i]))
                part = x.index_select(0, idx.to(x.device))
                for _, module in sub:
                    part = module(part)
                out.index_copy_(0, idx.to(x.device), part)
        return out


def kornia_views(per_sample_policy: bool):
    policy = KorniaAutoAugment("cifar10")
    classify = K.AugmentationSequential(
        K.RandomCrop((32, 32), padding=4, fill=0), K.RandomHorizontalFlip(),
        PerSamplePolicy(policy) if per_sample_policy else policy)
    contrast = K.AugmentationSequential(
        K.RandomResizedCrop((32, 32), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)), K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((13, 13), (0.1, 2.0), p=0.5))
    normalize = K.Normalize(torch.tensor(MEAN), torch.tensor(STD))

    def step(a: torch.Tensor, b: torch.Tensor, seed: int):
        torch.manual_seed(seed)  # kornia draws from the global RNG: no per-call generator
        v0 = normalize(classify(torch.cat((a, b)).float().div_(255)))
        v12 = normalize(contrast(a.repeat(2, 1, 1, 1).float().div_(255)))
        return v0, v12
    return step


# ----------------------------------------------------------------------------------------------
# counting operations and host syncs
# ----------------------------------------------------------------------------------------------


def count(step, a, b, arg) -> dict:
    a, b = a.clone(), b.clone()
    with CountOps([a, b]) as c:
        step(a, b, arg)
    return c.summary()


# ----------------------------------------------------------------------------------------------
# statistics against the PIL loader path, and per-operation parity
# ----------------------------------------------------------------------------------------------


def parity_gaps(make_views, x: torch.Tensor) -> dict:
    """The parity test's statistics: |PIL - views| / tolerance for each (1 = the test's limit)."""
    pv0, pv1 = pil_views(x, seed=0)
    v0, v1 = make_views(x)
    ps, ds = view_stats(pv0, pv1), view_stats(v0, v1)
    scale = math.sqrt(512 / x.shape[0])
    return {k: round((ps[k] - ds[k]).abs().max().item() / (tol * scale), 2) for k, tol in TOLERANCE.items()}


def u8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _kornia_warp(x: torch.Tensor, inverse: torch.Tensor, mode: str) -> torch.Tensor:
    """kornia's warp_affine with torchvision's inverse matrices (centred) and grey fill."""
    n, _, h, w = x.shape
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    a = inverse.view(n, 2, 3)[:, :, :2]
    t = inverse.view(n, 2, 3)[:, :, 2] + c - (a @ c)
    inv = torch.cat((torch.cat((a, t[:, :, None]), 2), torch.tensor([[[0.0, 0.0, 1.0]]]).expand(n, 1, 3)), 1)
    forward = torch.linalg.inv(inv)[:, :2].float()
    return kornia.geometry.transform.warp_affine(x, forward, (h, w), mode=mode, padding_mode="fill",
                                                 fill_value=torch.full((3,), GREY), align_corners=True)


def kornia_op(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The kornia kernel behind kornia's op, called with torchvision's parameters (float in [0, 1])."""
    E = kornia.enhance
    f = (1.0 + m).float()
    if name in aa.GEOMETRIC:
        op = torch.full((x.shape[0],), aa.OP_ID[name])
        return _kornia_warp(x, aa.autoaugment_inverse_matrices(op, m, *x.shape[-2:]), aa.resampling(name))
    table = {
        "Brightness": lambda: E.adjust_brightness(x, f - 1),  # K.RandomBrightness: additive
        "Color": lambda: E.adjust_saturation(x, f),  # K.RandomSaturation: HSV
        "Contrast": lambda: E.adjust_contrast(x, f),  # K.RandomContrast: no mean
        "Sharpness": lambda: E.sharpness(x, f),
        "Posterize": lambda: E.posterize(x, m.long()),
        "Solarize": lambda: E.solarize(x, (m / 255).float()),
        "AutoContrast": lambda: E.normalize_min_max(x),
        "Equalize": lambda: E.equalize(x),
        "Invert": lambda: E.invert(x),
    }
    return table[name]()


def kornia_jitter_op(name: str, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """K.ColorJitter's kernels (torchvision-like semantics), and grayscale, blur."""
    E = kornia.enhance
    if name == "brightness":
        return E.adjust_brightness_accumulative(x, f)
    if name == "contrast":
        return E.adjust_contrast_with_mean_subtraction(x, f)
    if name == "saturation":
        return E.adjust_saturation_with_gray_subtraction(x, f)
    if name == "hue":
        return E.adjust_hue(x, f * 2 * math.pi)
    if name == "grayscale":
        return kornia.color.rgb_to_grayscale(x).expand_as(x)
    if name == "blur":
        return kornia.filters.gaussian_blur2d(x, (13, 13), torch.stack((f, f), 1), border_type="reflect")
    raise ValueError(name)


def diff_stats(out: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (out.int() - ref.int()).abs().float()
    return {"mean_abs": round(d.mean().item(), 3), "frac_differ": round((d > 0).float().mean().item(), 4),
            "max": int(d.max().item())}


def per_op_parity(x: torch.Tensor) -> dict:
    """Each op on the same images with the same parameters: ours and kornia's against torchvision."""
    table = aa.AutoAugmentTable.from_torchvision()
    rows = {}
    n = x.shape[0]
    xf = x.float() / 255
    for name in sorted({aa.AA_OPS[int(o)] for o in table.op.flatten()}):
        mags = sorted({float(m) * s for o, m, sg in zip(table.op.flatten(), table.magnitude.flatten(),
                                                       table.signed.flatten())
                       if aa.AA_OPS[int(o)] == name for s in ((1, -1) if sg else (1,))})
        m = torch.tensor(mags, dtype=torch.float64)[torch.arange(n) % len(mags)]
        ref = torch.stack([tv_autoaugment_op(x[i], name, float(m[i])) for i in range(n)])
        rows[f"AA {name}"] = {"ours": diff_stats(aa.apply_autoaugment_op(name, x, m), ref),
                              "kornia": diff_stats(u8(kornia_op(name, xf, m)), ref)}
    g = torch.Generator().manual_seed(0)
    factor = torch.empty(n).uniform_(0.6, 1.4, generator=g)
    hue = torch.empty(n).uniform_(-0.1, 0.1, generator=g)
    sigma = torch.empty(n).uniform_(0.1, 2.0, generator=g)
    from concutmix_cli.data.device import blur, color, hue as hue_kernels

    cases = {
        "brightness": (color.adjust_brightness, TF.adjust_brightness, factor),
        "contrast": (color.adjust_contrast, TF.adjust_contrast, factor),
        "saturation": (color.adjust_saturation, TF.adjust_saturation, factor),
        "hue": (hue_kernels.adjust_hue, TF.adjust_hue, hue),
        "grayscale": (lambda im, _: color.grayscale(im), lambda im, _: TF.rgb_to_grayscale(im, 3), factor),
        "blur": (lambda im, s: blur.gaussian_blur(im, s, 13), lambda im, s: TF.gaussian_blur(im, [13, 13], [s, s]),
                 sigma),
    }
    for name, (mine, theirs, f) in cases.items():
        ref = torch.stack([theirs(x[i], float(f[i])) for i in range(n)])
        rows[f"jitter/{name}"] = {"ours": diff_stats(mine(x, f), ref),
                                  "kornia": diff_stats(u8(kornia_jitter_op(name, xf, f)), ref)}
    return rows


def _kornia_range_in_torchvision_units(name: str, lo: float, hi: float) -> tuple[float, float]:
    """kornia's sampled magnitude range of op `name` in the unit torchvision's magnitude has."""
    if name in ("ShearX", "ShearY"):  # kornia: x * 180 degrees; torchvision: shear factor m
        return math.tan(math.radians(lo * 180)), math.tan(math.radians(hi * 180))
    if name in ("TranslateX", "TranslateY"):  # kornia: fraction of the side; torchvision: pixels
        return lo * 32, hi * 32
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):  # kornia: factor; torchvision: factor - 1
        return lo - 1, hi - 1
    if name == "Solarize":  # kornia: threshold in [0, 1]; torchvision: in [0, 255]
        return lo * 255, hi * 255
    return lo, hi  # Rotate (degrees), Posterize (bits)


def policy_comparison() -> dict:
    """kornia's cifar10 policy against torchvision's: the same ops, probabilities and bins, but
    does a bin mean the same magnitude? Per entry with a magnitude: torchvision's value(s) (both
    signs where it draws a sign) and the range kornia samples, in torchvision's units."""
    from kornia.augmentation.auto.autoaugment import ops as kornia_ops
    from kornia.augmentation.auto.autoaugment.autoaugment import cifar10_policy

    tv = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = tv._augmentation_space(10, (32, 32))  # noqa: SLF001
    rows, same, inside = [], 0, 0
    for t_sub, k_sub in zip(tv.policies, cifar10_policy):
        for (name, prob, bin_id), (k_name, k_prob, k_bin) in zip(t_sub, k_sub):
            same += (name.lower(), prob, bin_id) == (k_name.replace("_", ""), k_prob, k_bin)
            if bin_id is None:
                continue
            m = float(space[name][0][bin_id])
            values = sorted({m, -m}) if space[name][1] else [m]
            lo, hi = (float(v) for v in kornia_ops.__dict__[k_name](k_prob, k_bin).magnitude_range)
            lo, hi = _kornia_range_in_torchvision_units(name, lo, hi)
            if name == "Posterize":  # both take whole bits
                values, lo, hi = [int(v) for v in values], int(lo), int(hi)
            hit = any(min(lo, hi) <= v <= max(lo, hi) for v in values)
            inside += hit
            rows.append(f"{name} bin {bin_id}: torchvision {[round(v, 3) for v in values]}, "
                        f"kornia U({min(lo, hi):.3g}, {max(lo, hi):.3g})" + ("" if hit else "  <- outside"))
    return {"entries": sum(len(sub) for sub in tv.policies), "same_op_prob_bin": same,
            "entries_with_magnitude": len(rows), "torchvision_magnitude_in_kornia_range": inside, "rows": rows}


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared CIFAR-like folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    images = load_prepared(args.data).train.images.permute(0, 3, 1, 2).contiguous()
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    n = args.batch_size
    a, b = images[pick[:n]], images[pick[n:2 * n]]
    dv = DeviceViews(MEAN, STD)
    runs = {"ours": (ours(dv), lambda s: torch.Generator().manual_seed(s)),
            "kornia": (kornia_views(False), lambda s: s),
            "kornia_per_sample_policy": (kornia_views(True), lambda s: s)}
    result = {"batch_size": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "kornia": kornia.__version__}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (step, arg) in runs.items():
        step(a, b, arg(0))  # warm-up
    for s in range(args.steps):  # interleaved, so a change in the machine's load hits all alike
        for name, (step, arg) in runs.items():
            start = time.perf_counter()
            step(a, b, arg(1 + s))
            times[name].append(time.perf_counter() - start)
    for name, (step, arg) in runs.items():
        result[name] = {"ms_per_step": round(1000 * statistics.median(times[name]), 1), **count(step, a, b, arg(99))}
    # the detector itself: a step that reads pixels back (item) and masks by them (nonzero) counts 2
    result["sync_detector_check"] = count(lambda a, b, _: (a.float().mean().item(), a[a > 100]),
                                          a, b, None)["host_syncs"]
    x = images[pick[-256:]]

    def views_of(step, arg):
        def make(im):
            v0, v12 = step(im, im[:0], arg(0))
            return v0, v12[: len(im)]
        return make

    result["parity_gap_over_tolerance"] = {name: parity_gaps(views_of(step, arg), x)
                                           for name, (step, arg) in runs.items()}
    result["per_op_vs_torchvision"] = per_op_parity(images[pick[:64]])
    result["policy"] = policy_comparison()
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

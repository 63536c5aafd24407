#!/usr/bin/env python
"""ImageNet scale on one card: is the loader or the GPU the bottleneck of an ImageNet-LT ConCutMix
run, and how long would the authors' 90 epochs take?

1. Makes a synthetic ImageNet-LT-like tree of JPEG files (default 500x375, quality 90, the size and
   encoding of a typical ImageNet photo) with a long-tailed class profile, and its split lists in
   the ImageNet_LT format (`train/c0001/00001.jpg 1`), then prepares it through the same route a
   user takes (`concutmix prepare imagenet-lt --root --train-list --test-list`).
2. For each loader worker count, benchmarks/throughput.py measures the `imagenet-lt-resnext50`
   preset (ResNeXt-50 32x4d, batch 256, three 224x224 views, the loader path: PIL decode and
   torchvision transforms in DataLoader workers) against the model-only ceiling on the same card.
3. Prints and writes (`--json`) the samples/s per worker count, the smallest count within 5 % of
   the best (the one that saturates what the loader can give), the ratio to the ceiling, and the
   projected time of 90 epochs of ImageNet-LT's 115,846 training images at the best rate and at
   the ceiling (training steps only; the per-epoch evaluation is not counted).

    python benchmarks/imagenet_scale.py --workers 4,8,12,15 --json out.json              # a GPU
    python benchmarks/imagenet_scale.py --classes 8 --images 48 --workers 1,2 --batch-size 4 \
        --steps 1 --device cpu                                                        # CPU rehearsal

Synthetic pixels: smooth colour fields plus fine noise, so that a JPEG of them is about as large
as a photo's (decoding cost grows with the file's entropy); the labels are meaningless, only the
speed is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from argtypes import Parser, between, counts, positive, run, size  # noqa: E402 (beside this file)
from concutmix_cli.config import STEP_MODES  # noqa: E402
from concutmix_cli.fileio import atomic_write_text  # noqa: E402
IMAGENET_LT_TRAIN = 115_846
"""Training images of ImageNet-LT (Liu et al. 2019): the projection's epoch."""
EPOCHS = 90
"""The published ImageNet-LT schedule (presets/imagenet-lt-resnext50.toml)."""


def class_counts(classes: int, images: int, imbalance: float) -> list[int]:
    """A long-tailed profile n_i = n_max * IF^(-i / (C - 1)) scaled to about `images` in all
    (at least one image a class)."""
    shape = [imbalance ** (-i / max(classes - 1, 1)) for i in range(classes)]
    scale = images / sum(shape)
    return [max(1, round(scale * s)) for s in shape]


def photo_like(seed: int, width: int, height: int) -> np.ndarray:
    """A height x width x 3 uint8 image: a smooth colour field (a 6x8 grid resized bilinearly)
    plus fine noise, whose JPEG is about the size of a photo's."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8))
    field = np.asarray(grid.resize((width, height), Image.BILINEAR), dtype=np.float64)
    return np.clip(field + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)


def _write(job: tuple[str, int, int, int, int]) -> int:
    path, seed, width, height, quality = job
    Image.fromarray(photo_like(seed, width, height)).save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def make_tree(root: Path, classes: int, images: int, imbalance: float, width: int, height: int,
              quality: int, test_per_class: int, workers: int) -> dict:
    """The JPEG tree and its ImageNet_LT-style lists under `root`; returns what was made."""
    jobs, lines = [], {"train": [], "test": []}
    for label, count in enumerate(class_counts(classes, images, imbalance)):
        for split, n in (("train", count), ("test", test_per_class)):
            folder = root / split / f"c{label:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/c{label:04d}/{i:05d}.jpg"
                jobs.append((str(root / rel), len(jobs), width, height, quality))
                lines[split].append(f"{rel} {label}")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(_write, jobs, chunksize=32))
    for split, body in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(body) + "\n")
    return {"classes": classes, "train_images": len(lines["train"]), "test_images": len(lines["test"]),
            "width": width, "height": height, "quality": quality,
            "mean_file_kb": sum(sizes) / len(sizes) / 1024, "seconds_to_make": time.perf_counter() - started}


def tree_folder(root: Path, classes: int, images: int, imbalance: float, width: int, height: int,
                quality: int, test_per_class: int) -> Path:
    """Where the tree of these settings is made under `root`, and found again: each set of
    settings has its own folder, so that a tree made for other settings is never measured (and
    reported) as this one."""
    return root / (f"c{classes}-n{images}-if{imbalance:g}-{width}x{height}-q{quality}"
                   f"-t{test_per_class}")


def prepare(root: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "concutmix_cli", "prepare", "imagenet-lt", "--root", str(root),
                    "--train-list", str(root / "ImageNet_LT_train.txt"),
                    "--test-list", str(root / "ImageNet_LT_test.txt"), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)


def measure(data: Path, workers: int, args) -> dict:
    """benchmarks/throughput.py on the prepared tree with `workers` loader processes."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--data", str(data),
           "--preset", "imagenet-lt-resnext50", "--method", "concutmix", "--augment-on", "loader",
           "--num-workers", str(workers), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--rounds", "1", "--profile-steps", "1", "--device", args.device, "--json"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.step:
        cmd += ["--step", args.step]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:  # one slow count is a row, not the end of the others
        return {"num_workers": workers, "failed": f"timed out after {args.timeout:g} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"num_workers": workers, "failed": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict], made: dict) -> dict:
    good = [r for r in rows if "failed" not in r]
    out: dict = {"tree": made, "per_workers": rows}
    if not good:
        return out
    best = max(good, key=lambda r: r["samples_per_s"])
    enough = min((r for r in good if r["samples_per_s"] >= 0.95 * best["samples_per_s"]),
                 key=lambda r: r["num_workers"])
    ceiling = max(r["ceiling_samples_per_s"] for r in good)
    out.update({
        "device": best["device"], "batch_size": best["batch_size"], "arch": best["arch"],
        "best_samples_per_s": best["samples_per_s"], "best_workers": best["num_workers"],
        "saturating_workers": enough["num_workers"], "ceiling_samples_per_s": ceiling,
        "ratio": best["samples_per_s"] / ceiling,
        "loader_bound_by": ceiling / best["samples_per_s"],
        "hours_90_epochs": EPOCHS * IMAGENET_LT_TRAIN / best["samples_per_s"] / 3600,
        "hours_90_epochs_at_ceiling": EPOCHS * IMAGENET_LT_TRAIN / ceiling / 3600,
    })
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/imagenet-synthetic"),
                   help="where the JPEG tree and the prepared folder are made, a folder per set of "
                        "settings (reused for the same settings)")
    p.add_argument("--classes", type=between(2, 100_000), default=1000)
    p.add_argument("--images", type=positive(int), default=8000, help="training images in all (long-tailed)")
    p.add_argument("--imbalance", type=positive(float), default=256.0,
                   help="head over tail, 1 or more; ImageNet-LT: 1280 down to 5")
    p.add_argument("--size", type=size, default=(500, 375), help="WIDTHxHEIGHT of each JPEG")
    p.add_argument("--quality", type=between(1, 100), default=90)
    p.add_argument("--test-per-class", type=positive(int), default=1)
    p.add_argument("--workers", type=counts, default=[4, 8, 12, 15], help="loader worker counts to measure")
    p.add_argument("--batch-size", type=positive(int), default=None, help="[the preset's: 256]")
    p.add_argument("--steps", type=positive(int), default=8, help="timed steps per worker count")
    p.add_argument("--warmup", type=positive(int, allow_zero=True), default=3)
    p.add_argument("--step", default=None, choices=STEP_MODES,
                   help="runtime.step [the preset's]")
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=positive(float), default=240, help="seconds per worker count")
    p.add_argument("--json", type=Path, help="write the result here too (after each worker count)")
    args = p.parse_args(argv)
    if args.imbalance < 1:
        p.error(f"argument --imbalance: must be 1 or more (got {args.imbalance:g})")
    if args.images < args.classes:
        p.error(f"--images {args.images} is fewer than --classes {args.classes}: each class needs one")
    if args.root.exists() and not args.root.is_dir():
        p.error(f"--root {args.root} is a file; give a folder")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        p.error(f"--json {args.json}: give a file in an existing folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    width, height = args.size
    folder = tree_folder(args.root, args.classes, args.images, args.imbalance, width, height,
                         args.quality, args.test_per_class)
    tree, data, made_path = folder / "tree", folder / "prepared", folder / "tree.json"
    if made_path.is_file() and (data / "manifest.json").is_file():
        made = json.loads(made_path.read_text())
    else:
        made = make_tree(tree, args.classes, args.images, args.imbalance, width, height,
                         args.quality, args.test_per_class, os.cpu_count() or 1)
        prepare(tree, data)
        atomic_write_text(made_path, json.dumps(made))
    print(f"tree: {made['train_images']} training JPEGs of {width}x{height} in {made['classes']} "
          f"classes, {made['mean_file_kb']:.0f} KB each on average", file=sys.stderr)
    rows = []
    for workers in args.workers:
        row = measure(data, workers, args)
        rows.append(row)
        shown = row.get("failed") or (f"{row['samples_per_s']:.0f} samples/s (ceiling "
                                       f"{row['ceiling_samples_per_s']:.0f}, ratio {row['ratio']:.2f})")
        print(f"{workers:3d} workers: {shown}", file=sys.stderr, flush=True)
        if args.json:  # what is measured so far survives a window's timeout cutting the rest off
            atomic_write_text(args.json, json.dumps(summarize(rows, made), indent=1) + "\n")
    result = summarize(rows, made)
    if "best_samples_per_s" in result:
        print(f"best {result['best_samples_per_s']:.0f} samples/s with {result['best_workers']} workers "
              f"({result['saturating_workers']} within 5 %); ceiling {result['ceiling_samples_per_s']:.0f}; "
              f"90 epochs of ImageNet-LT: {result['hours_90_epochs']:.1f} h "
              f"({result['hours_90_epochs_at_ceiling']:.1f} h at the ceiling)", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run(main)

"""folder, csv: a user's own images (docs/own-data.md). folder: one sub-folder per class under
--root (--val, --test: folders of the same layout); csv: `path,label` files (--train, --val,
--test) with paths relative to --root. Reading, decoding and splitting are data/own.py's."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from concutmix_cli.data.own import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, stage_own
from concutmix_cli.data.routes.base import ROOT, SEED, Option, Options, Route, check_seed
from concutmix_cli.data.staging import inside
from concutmix_cli.errors import UserError

TRAIN = Option("train", "--train", Path | None)
VAL = Option("val", "--val", Path | None)
TEST = Option("test", "--test", Path | None)
IMAGE_SIZE = Option("image_size", "--image-size", int | None)
VAL_FRACTION = Option("val_fraction", "--val-fraction", float | None)
TEST_FRACTION = Option("test_fraction", "--test-fraction", float | None)
SKIP_BAD = Option("skip_bad", "--skip-bad", bool, False)


def _sizes(options: Options) -> tuple[int, float, float]:
    """--image-size, --val-fraction, --test-fraction with their defaults (224, 0, 0)."""
    image_size = DEFAULT_IMAGE_SIZE if options.image_size is None else options.image_size
    return image_size, options.val_fraction or 0.0, options.test_fraction or 0.0


class OwnRoute(Route):
    names = ("folder", "csv")
    options = (ROOT, TRAIN, VAL, TEST, IMAGE_SIZE, VAL_FRACTION, TEST_FRACTION, SEED, SKIP_BAD)

    def check(self, options: Options) -> None:
        image_size, val_fraction, test_fraction = _sizes(options)
        if not 8 <= image_size <= MAX_IMAGE_SIZE:
            raise UserError(f"--image-size must be between 8 and {MAX_IMAGE_SIZE} "
                            f"(got {image_size})")
        for option, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
            if not (math.isfinite(value) and 0 <= value < 1):
                raise UserError(f"{option} must be at least 0 and below 1 (got {value:g})")
        if val_fraction + test_fraction >= 1:
            raise UserError(f"--val-fraction {val_fraction:g} and --test-fraction "
                            f"{test_fraction:g} hold out every image; their sum must be below 1")
        if options.val is not None and val_fraction:
            raise UserError("--val and --val-fraction both make a validation split; pass one")
        if options.test is not None and test_fraction:
            raise UserError("--test and --test-fraction both make a test split; pass one")
        check_seed(options.seed)
        folder = options.dataset == "folder"
        if options.root is None or (not folder and options.train is None):
            raise UserError("prepare folder needs --root (one sub-folder per class)" if folder else
                            "prepare csv needs --train (a path,label CSV file) and --root (the "
                            "folder its paths are relative to)")
        if folder and options.train is not None:
            raise UserError("prepare folder takes the training images from --root; --train is "
                            "for prepare csv")
        if folder and inside(options.out, options.root):
            raise UserError(f"--out {options.out} is inside --root {options.root}, where it would "
                            "become a class folder; choose an --out outside the image folder")

    def default_out(self, options: Options) -> Path:
        """data/<the image folder's or the training CSV's name>."""
        named_by = options.root if options.dataset == "folder" else options.train
        name = Path(os.path.abspath(named_by)).stem if named_by is not None else options.dataset
        return Path("data") / (name or options.dataset)

    def stage(self, staging_dir: Path, options: Options) -> dict[str, Any]:
        image_size, val_fraction, test_fraction = _sizes(options)
        by_csv = options.dataset == "csv"
        return stage_own(
            staging_dir, options.dataset, root=Path(options.root),
            csvs={"train": options.train, "val": options.val, "test": options.test}
            if by_csv else None,
            val=None if by_csv else options.val, test=None if by_csv else options.test,
            image_size=image_size, val_fraction=val_fraction, test_fraction=test_fraction,
            seed=options.seed, skip_bad=options.skip_bad, callbacks=options.callbacks)

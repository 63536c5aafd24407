"""synthetic-lt: a long-tailed subset of the built-in synthetic dataset (sources.make_synthetic),
drawn like CIFAR's; no download, stored as arrays. For smoke runs and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concutmix_cli.data import sources, staging
from concutmix_cli.data.routes.base import (IMBALANCE, N_MAX, SEED, Option, Options, Route,
                                            check_every_class_kept, check_subset_numbers,
                                            subset_out)
from concutmix_cli.errors import UserError

CLASSES = Option("classes", "--classes", int, 10)
DEFAULT_N_MAX = 200
MAX_IMAGES = 100_000
"""synthetic-lt is built in memory as float32 (12 KB an image): a cap that keeps it near 1 GB."""
TEST_PER_CLASS = 50
"""make_synthetic's test images per class, drawn besides the training pool."""


class SyntheticRoute(Route):
    names = ("synthetic-lt",)
    options = (IMBALANCE, SEED, N_MAX, CLASSES)

    def check(self, options: Options) -> None:
        check_subset_numbers(options)
        if not 2 <= options.classes <= 1000:
            raise UserError(f"--classes must be between 2 and 1000 (got {options.classes})")
        pool = options.classes * ((options.n_max or DEFAULT_N_MAX) + TEST_PER_CLASS)
        if pool > MAX_IMAGES:
            raise UserError(
                f"synthetic-lt with --classes {options.classes} and --n-max {options.n_max} would "
                f"build {pool:,} images; the built-in generator is capped at {MAX_IMAGES:,}"
            )
        check_every_class_kept(options.imbalance, options.n_max or DEFAULT_N_MAX, options.classes)

    def default_out(self, options: Options) -> Path:
        return subset_out(options)

    def stage(self, staging_dir: Path, options: Options) -> dict[str, Any]:
        pool = options.n_max or DEFAULT_N_MAX
        src = sources.make_synthetic(num_classes=options.classes, per_class=pool,
                                     test_per_class=TEST_PER_CLASS, seed=options.seed)
        fields = staging.stage_arrays(staging_dir, src, options.imbalance, options.seed, pool)
        return {**fields, "imbalance": options.imbalance, "seed": options.seed}

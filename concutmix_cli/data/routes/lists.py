"""imagenet-lt, places-lt, inat2018: benchmarks that come as split lists (`relative/path label`
lines) beside an image tree the user has. The lists are checked and copied (data/lists.py), the
images stay where they are; ImageNet statistics normalize them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concutmix_cli.data.lists import stage_list_dataset
from concutmix_cli.data.routes.base import ROOT, Option, Options, Route
from concutmix_cli.errors import UserError

TRAIN_LIST = Option("train_list", "--train-list", Path | None)
VAL_LIST = Option("val_list", "--val-list", Path | None)
TEST_LIST = Option("test_list", "--test-list", Path | None)


class ListRoute(Route):
    names = ("imagenet-lt", "places-lt", "inat2018")
    options = (ROOT, TRAIN_LIST, VAL_LIST, TEST_LIST)

    def check(self, options: Options) -> None:
        if options.root is None or options.train_list is None:
            raise UserError(f"{options.dataset} needs --root (the images) and --train-list")

    def stage(self, staging_dir: Path, options: Options) -> dict[str, Any]:
        from concutmix_cli.data.views import IMAGENET_MEAN, IMAGENET_STD

        fields = stage_list_dataset(
            staging_dir, options.dataset, Path(options.root), Path(options.train_list),
            Path(options.val_list) if options.val_list else None,
            Path(options.test_list) if options.test_list else None,
        )
        return {**fields, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "seed": None}

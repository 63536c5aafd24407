"""cifar10-lt, cifar100-lt: the LDAM-DRW long-tailed subset of CIFAR-10/100, from torchvision's
downloader (--root, --no-download) or an offline .npz archive (--source), stored as arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concutmix_cli.data import sources, staging
from concutmix_cli.data.routes.base import (IMBALANCE, N_MAX, ROOT, SEED, Option, Options, Route,
                                            check_every_class_kept, check_subset_numbers,
                                            subset_out)
from concutmix_cli.errors import UserError

SOURCE = Option("source", "--source", Path | None)
DOWNLOAD = Option("download", "--no-download", bool, True)
TORCHVISION_ROOT = Path("data/torchvision")
"""Where torchvision keeps (and downloads) CIFAR when no --root is given."""


class CifarRoute(Route):
    names = ("cifar10-lt", "cifar100-lt")
    options = (IMBALANCE, SEED, N_MAX, SOURCE, ROOT, DOWNLOAD)

    def check(self, options: Options) -> None:
        check_subset_numbers(options)
        per_class = sources.CIFAR_N_MAX[options.dataset]
        if options.n_max is not None and options.n_max > per_class:
            raise UserError(f"--n-max {options.n_max}: {options.dataset} has {per_class} "
                            f"training images per class")
        check_every_class_kept(options.imbalance, options.n_max or per_class,
                               sources.CIFAR_CLASSES[options.dataset])

    def default_out(self, options: Options) -> Path:
        return subset_out(options)

    def inputs(self, options: Options) -> dict[str, Path]:
        found = super().inputs(options)
        if options.source is None:  # torchvision reads (or downloads into) its default root
            found.setdefault("--root", TORCHVISION_ROOT)
        return found

    def stage(self, staging_dir: Path, options: Options) -> dict[str, Any]:
        if options.source is not None:
            src = sources.load_npz(Path(options.source), options.dataset)
        else:
            src = sources.load_torchvision(options.dataset, Path(options.root or TORCHVISION_ROOT),
                                           options.download)
        largest = options.n_max or sources.CIFAR_N_MAX[options.dataset]
        fields = staging.stage_arrays(staging_dir, src, options.imbalance, options.seed, largest)
        return {**fields, "imbalance": options.imbalance, "seed": options.seed}

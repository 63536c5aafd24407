"""What a dataset route is: the options it accepts, its checks, its default folder, its staging.

A route is one family of datasets that `prepare` builds the same way (cifar.py, lists.py, ...).
`prepare` (data/prepare.py) looks the route up by the dataset's name, refuses the options it
does not accept, asks it to `check` and `stage`, and swaps the staged folder into place with its
manifest. Options that several routes take are declared here once, so each has one type, one
default and one flag everywhere.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from concutmix_cli.data import longtail
from concutmix_cli.errors import UserError

MAX_SEED = 2**32 - 1
"""Seeds go to numpy's legacy RNG (the LDAM-DRW selection), which takes 0 .. 2**32 - 1."""


@dataclass(frozen=True)
class Option:
    """One keyword option of `prepare`: its name, its command-line flag (for messages), its type
    (the library API checks it) and its default."""

    name: str
    flag: str
    annotation: Any
    default: Any = None

    def given(self, value: Any) -> bool:
        """Whether `value` was chosen: the CLI passes every option, most at their defaults."""
        return value != self.default

    @property
    def is_path(self) -> bool:
        return self.annotation is Path or Path in typing.get_args(self.annotation)


IMBALANCE = Option("imbalance", "--imbalance", float, 100.0)
SEED = Option("seed", "--seed", int, 0)
N_MAX = Option("n_max", "--n-max", int | None)
ROOT = Option("root", "--root", Path | None)


class Options(SimpleNamespace):
    """One `prepare` call as its route sees it: `dataset` (the name it was called by), each
    option the route accepts (its default where not given), `callbacks` (progress events of a
    long stage) and `out` (the folder to be written; None until `default_out` has named it)."""


class Route:
    """A family of datasets that `prepare` builds the same way. A subclass sets `names` and
    `options` and implements `stage`; `check`, `default_out` and `inputs` have defaults."""

    names: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()

    def check(self, options: Options) -> None:
        """Refuse what cannot be prepared, one line naming the option, before anything is read
        or written (`options.out` is known by then)."""

    def default_out(self, options: Options) -> Path:
        """The folder written when no --out is given."""
        return Path("data") / options.dataset

    def inputs(self, options: Options) -> dict[str, Path]:
        """The paths this call reads, by flag: --force must never replace a folder holding one."""
        found = {option.flag: getattr(options, option.name) for option in self.options
                 if option.is_path}
        return {flag: Path(path) for flag, path in found.items() if path is not None}

    def stage(self, staging_dir: Path, options: Options) -> dict[str, Any]:
        """Write the dataset's files into `staging_dir`; returns the manifest fields, among them
        `imbalance` and `seed` (what the folder holds). prepare adds the dataset's name, the
        time, the default shot groups and the checksum."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- shared checks


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED} (got {seed})")


def check_subset_numbers(options: Options) -> None:
    """--imbalance, --seed and --n-max of a long-tailed subset (cifar, synthetic)."""
    if not math.isfinite(options.imbalance):
        raise UserError(f"--imbalance must be a finite number (got {options.imbalance:g})")
    if options.imbalance < 1:
        raise UserError(f"--imbalance must be at least 1 (got {options.imbalance:g})")
    check_seed(options.seed)
    if options.n_max is not None and options.n_max < 1:
        raise UserError(f"--n-max must be at least 1 (got {options.n_max})")


def check_every_class_kept(imbalance: float, largest: int, num_classes: int) -> None:
    """The exponential profile from `largest` images down must leave each class one image."""
    counts = longtail.exponential_counts(largest, num_classes, imbalance)
    if min(counts) < 1:
        raise UserError(
            f"--imbalance {imbalance:g} with {largest} images in the largest class leaves "
            f"class {counts.index(min(counts))} with no training image; use a smaller --imbalance "
            f"(at most {largest})"
        )


def subset_out(options: Options) -> Path:
    """data/NAME-ifIF: the folder of a long-tailed subset, named by its imbalance factor."""
    return Path("data") / f"{options.dataset}-if{options.imbalance:g}"

"""Shared fixtures: tiny prepared datasets and paths to the real data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CIFAR100_NPZ = SHARED / "data" / "cifar100.npz"


def tiny_synthetic(folder: Path, **kwargs) -> Path:
    """A small synthetic-lt folder: 10 classes, 40 down to 4 images, 50 test images per class."""
    from concutmix_cli.data.prepare import prepare

    options = {"n_max": 40, "imbalance": 10.0, "seed": 0}
    options.update(kwargs)
    return prepare("synthetic-lt", out=folder, **options).out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="session")
def cifar100_npz() -> Path:
    if not CIFAR100_NPZ.is_file():
        pytest.skip(f"real CIFAR-100 archive not found at {CIFAR100_NPZ}")
    return CIFAR100_NPZ


@pytest.fixture
def cli(capsys):
    """Run the real entry point (`concutmix_cli.cli.main`) in-process: returns (code, out, err)."""
    import sys

    from concutmix_cli.cli import main

    def invoke(*args):
        saved = sys.argv
        sys.argv = ["concutmix", *[str(a) for a in args]]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = saved
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke

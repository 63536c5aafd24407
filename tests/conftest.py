"""Shared fixtures: tiny prepared datasets and paths to the real data beside the checkout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CIFAR100_NPZ = SHARED / "data" / "cifar100.npz"


FAST_CLI = ["--batch-size", "16", "--device", "cpu", "--set", "runtime.max_steps_per_epoch=1",
            "--set", "data.num_workers=0"]
"""`train` options for a run of one step an epoch on the CPU (the tests need the files)."""


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, loaded once (registered in sys.modules, where dataclasses
    look their module up and where the scripts find each other: reproduce.py imports
    repro_table.py from beside it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_synthetic(folder: Path, **kwargs) -> Path:
    """A small synthetic-lt folder: 10 classes, 40 down to 4 images, 50 test images per class."""
    from concutmix_cli.data.prepare import prepare

    options = {"n_max": 40, "imbalance": 10.0, "seed": 0}
    options.update(kwargs)
    return prepare("synthetic-lt", out=folder, **options).out


def one_error_line(err: str, *fragments: str) -> None:
    """stderr is exactly one line, `error: ...`, holding each fragment, and no traceback."""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def refused(capsys, call, *fragments: str) -> None:
    """`call()` exits with code 2 and one `error:` line holding each fragment (a benchmark
    script's refusal, which raises SystemExit rather than returning a code)."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    one_error_line(capsys.readouterr().err, *fragments)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to compare a folder before and after)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def one_epoch_run(folder: Path, data: Path, *overrides: str) -> Path:
    """A run folder as `train` leaves it after one epoch (smoke preset, batch 16, CPU; the
    weights are untrained: the tests that use it need the files, not a model)."""
    import shutil

    from concutmix_cli.config import build_config
    from concutmix_cli.engine.checkpoint import RunFolder
    from concutmix_cli.engine.loop import Trainer
    from concutmix_cli.fileio import atomic_write_text

    cfg = build_config(preset="smoke", overrides=[f"data.path='{data}'", "optim.batch_size=16",
                                                  "data.num_workers=0", "runtime.device='cpu'",
                                                  *overrides])
    run = RunFolder(folder)
    run.create()
    atomic_write_text(run.config_path, cfg.to_json())
    shutil.copyfile(Path(data) / "manifest.json", run.path / "manifest.json")
    Trainer(cfg, run).save_checkpoint(1)
    return run.path


@pytest.fixture
def wide():
    """The CLI console wraps at 80 columns when captured; long tmp paths would be folded."""
    from concutmix_cli import cli as cli_module

    saved = cli_module.console.width
    cli_module.console.width = 1000
    yield
    cli_module.console.width = saved


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="session")
def data4(tmp_path_factory) -> Path:
    """4 classes (40, 18, 8, 4 training images; 50 test images each): small enough that a run
    spends its time on steps, not on evaluation. Shared: a test that edits it works on a copy."""
    return tiny_synthetic(tmp_path_factory.mktemp("data") / "d4", classes=4)


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

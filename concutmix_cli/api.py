"""The library's front door: train, evaluate and inspect from Python, without the CLI.

    from concutmix_cli import train, evaluate
    result = train("smoke", "runs/nb", data="data/synthetic-lt-if100",
                   overrides=["optim.epochs=1"], callbacks=print)
    report = evaluate(result.run_dir)
    print(report["overall"])

Nothing here prints or installs signal handlers; progress comes as events (events.py) to
`callbacks`, a stop is asked for with a `StopFlag`, errors are `UserError`s naming the parameter
or config key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concutmix_cli.config import Config, build_config
from concutmix_cli.data.prepared import PreparedData, load_prepared
from concutmix_cli.engine.checkpoint import RunFolder
from concutmix_cli.engine.evaluate import evaluate_run
from concutmix_cli.engine.train import TrainResult, run
from concutmix_cli.events import Callback, StopFlag
from concutmix_cli.inspect import InspectReport, inspect_run
from concutmix_cli.inference import Predictions

__all__ = ["evaluate", "export", "inspect_labels", "plot", "predict", "prepare", "report", "train",
           "TrainResult", "InspectReport", "Predictions", "StopFlag"]


def prepare(dataset: str, out: Path | str | None = None, **options: Any) -> dict[str, Any]:
    """Prepare a dataset folder (`concutmix prepare`; the options are its keyword arguments,
    e.g. `prepare("folder", "data/pets", root="photos", image_size=32, test_fraction=0.2)`);
    returns the manifest that was written."""
    from concutmix_cli.data.prepare import prepare as run_prepare

    return run_prepare(dataset, out=Path(out) if out is not None else None, **options).manifest


def train(config: Config | dict[str, Any] | str, run_dir: Path | str, *,
          data: PreparedData | Path | str | None = None, overrides: list[str] | None = None,
          callbacks: Callback | list[Callback] | None = None,
          stop: StopFlag | None = None) -> TrainResult:
    """Train a new run into `run_dir` (which must not hold a run yet).

    `config`: a `Config`, a raw dict, or a preset name / TOML path; `overrides`: "section.key=value"
    strings on top; `data`: a prepared folder or an already loaded `PreparedData` (default: the
    config's data.path)."""
    if isinstance(config, Config):
        cfg = build_config(base=config.model_dump(), overrides=overrides)
    elif isinstance(config, dict):
        cfg = build_config(base=config, overrides=overrides)
    else:
        cfg = build_config(preset=str(config), overrides=overrides)
    if data is not None and not isinstance(data, PreparedData):
        data = load_prepared(Path(data))
    return run(cfg, RunFolder(Path(run_dir)), False, data=data, callbacks=callbacks, stop=stop)


def evaluate(run_or_weights: Path | str, *, data: Path | str | None = None, split: str = "test",
             device: str = "auto", callbacks: Callback | list[Callback] | None = None,
             ) -> dict[str, Any]:
    """Top-1 (overall, many / medium / few), per-class accuracy and ECE of trained weights;
    `callbacks` receive `WorkProgress` events."""
    return evaluate_run(Path(run_or_weights), data=Path(data) if data else None, split=split,
                        device=device, callbacks=callbacks)


def predict(run_or_weights: Path | str, images: list[Path | str] | Path | str, *, top_k: int = 5,
            batch_size: int = 64, device: str = "auto", skip_bad: bool = False) -> Predictions:
    """Top-k classes (names, probabilities) of image files, folders or .txt lists of paths."""
    from concutmix_cli.inference import predict_images

    given = [images] if isinstance(images, (str, Path)) else list(images)
    return predict_images(Path(run_or_weights), [Path(i) for i in given], top_k=top_k,
                          batch_size=batch_size, device=device, skip_bad=skip_bad)


def export(run_or_weights: Path | str, format: str, out: Path | str):  # noqa: A002 - the CLI's name
    """Write the classifier as `torchscript` or `onnx` and check it by loading it back."""
    from concutmix_cli.exporter import export_model

    return export_model(Path(run_or_weights), format, Path(out))


def inspect_labels(run_or_weights: Path | str, *, data: Path | str | None = None, num: int = 16,
                   seed: int = 0, omega: float | None = None, top_k: int | None = None,
                   device: str = "auto", callbacks: Callback | list[Callback] | None = None,
                   ) -> InspectReport:
    """What rectification does to `num` mixed samples of the run's data, as data;
    `callbacks` receive `WorkProgress` events while the samples are drawn."""
    return inspect_run(run_or_weights, data=data, num=num, seed=seed, omega=omega, top_k=top_k,
                       device=device, callbacks=callbacks)


def report(runs: list[Path | str], *, group_by: str | None = None, evaluate: bool = True):
    """The last epoch of each run and mean +- sample std per `group_by` value, as a
    `reporting.Report` (`.runs`, `.groups`, `.as_dict()`; `reporting.markdown` formats it)."""
    from concutmix_cli.reporting import build_report

    return build_report([Path(r) for r in runs], group_by, evaluate=evaluate)


def plot(runs: list[Path | str], out: Path | str, *, fmt: str = "png", split: str = "test",
         device: str = "auto", force: bool = False,
         callbacks: Callback | list[Callback] | None = None) -> dict[str, Path]:
    """Per-class accuracy, learning curves and confusion matrices of `runs` into folder `out`;
    returns {what: file}. Needs the `plot` extra (matplotlib)."""
    from concutmix_cli.plots import plot_runs

    return plot_runs([Path(r) for r in runs], Path(out), fmt, split=split, device=device,
                     force=force, callbacks=callbacks)

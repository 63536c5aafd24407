"""The library's front door: train, evaluate and inspect from Python, without the CLI.

    from concutmix_cli import train, evaluate
    result = train("smoke", "runs/nb", data="data/synthetic-lt-if100",
                   overrides=["optim.epochs=1"], callbacks=print)
    report = evaluate(result.run_dir)
    print(report["overall"])

Nothing here prints or installs signal handlers; progress comes as events (events.py) to
`callbacks`, a stop is asked for with a `StopFlag`, errors are `UserError`s naming the parameter
or config key.

Every function checks the types of its arguments before it does anything (`_checked`): a wrong
type is a `BadValue` (a `UserError` and a `ValueError`) whose one line names the parameter, e.g.
"image_size must be an integer (got 32.5)". The check is strict: 32.5 or "5" is not an integer,
1 is not True, NaN is not a number. A path may be a `str` or a `Path`; where a list of runs or
images is expected, a single path means that one; `overrides` is a list of "section.key=value"
strings, never one string (which would be read character by character).
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import pydantic

from concutmix_cli.config import Config, build_config
from concutmix_cli.data.prepared import PreparedData, load_prepared
from concutmix_cli.engine.checkpoint import RunFolder
from concutmix_cli.engine.evaluate import evaluate_run
from concutmix_cli.engine.train import TrainResult, run
from concutmix_cli.errors import BadValue
from concutmix_cli.events import Callback, StopFlag
from concutmix_cli.inspect import InspectReport, inspect_run
from concutmix_cli.inference import Predictions

__all__ = ["evaluate", "export", "inspect_labels", "plot", "predict", "prepare", "report", "train",
           "TrainResult", "InspectReport", "Predictions", "StopFlag"]

Callbacks = Union[Callback, list[Callback], tuple[Callback, ...], None]
Paths = Union[Path, str, list[Union[Path, str]], tuple[Union[Path, str], ...]]
"""One path (that one run or image) or several."""


def _paths(given: Paths) -> list[Path]:
    """`Paths` as a list: one path alone is that one (never its characters)."""
    return [Path(p) for p in ([given] if isinstance(given, (str, Path)) else given)]

STRICT = pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)
"""How arguments are checked: strictly (lax coercion would hide mistakes: 32.5 -> 32), numbers
finite, our own classes (Config, PreparedData, StopFlag) by isinstance."""

DESCRIPTIONS = {"overrides": 'a list of "section.key=value" strings',
                "config": "a Config, a dict, or a preset name or TOML path"}
"""What a parameter must be, where its type alone says too little."""

_WORDS: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
    bool: ("True or False", "True or False values"), Path: ("a path", "paths"),
    dict: ("a dict", "dicts"), Callable: ("a callable", "callables"),
}


def _describe(annotation: Any, plural: bool = False) -> str:
    """An annotation in words, for messages: `Path | str | list[Path | str]` -> "a path or a
    list of paths" (None left out: every message is about a value that was given)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        if Path in parts and str in parts:  # a path may be either
            parts.remove(str)
        return " or ".join(dict.fromkeys(_describe(a, plural) for a in parts))
    if origin in (list, tuple):
        inner = _describe(typing.get_args(annotation)[0], plural=True)
        return ("lists of " if plural else "a list of ") + inner
    key = origin if origin in (dict, Callable) else annotation
    if key in _WORDS:
        return _WORDS[key][plural]
    name = getattr(annotation, "__name__", str(annotation))
    return f"{name}s" if plural else f"a {name}"


def _got(value: Any) -> str:
    if isinstance(value, str) and "\n" not in value:
        return repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    return " ".join(reprlib.repr(value).split())


def _bad_value(func_name: str, parameters: list[str], annotations: dict[str, Any],
               err: pydantic.ValidationError, args: tuple, kwargs: dict[str, Any],
               what: str = "argument") -> BadValue:
    """The first problem pydantic found, as one line that names the parameter."""
    problem = err.errors()[0]
    where = problem["loc"][0] if problem["loc"] else None
    value = args[where] if isinstance(where, int) and where < len(args) else kwargs.get(where)
    if isinstance(where, int):  # a positional argument
        where = parameters[where] if where < len(parameters) else None
    kind = problem["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return BadValue(f"{where} is not an {what} of {func_name}() (its {what}s: "
                        f"{', '.join(parameters)})", param=str(where))
    if kind == "unexpected_positional_argument" or where is None:
        return BadValue(f"{func_name}() got too many positional arguments; pass the optional "
                        f"ones by name ({', '.join(parameters)})")
    if kind == "missing_argument":
        return BadValue(f"{where} is missing: {func_name}() needs it", param=where)
    expected = DESCRIPTIONS.get(where) or _describe(annotations.get(where, Any))
    if kind == "finite_number":
        expected = "a finite number"
    got = _got(value)
    if isinstance(value, str) and "a list" in expected and "a string" not in expected \
            and "a path" not in expected:
        got = f"the single string {got}; pass a list, [{got}]"
    return BadValue(f"{where} must be {expected} (got {got})", param=where)


def _checked(func):
    """`func` with its arguments checked against its annotations before it runs (pydantic's
    `validate_call`, strict): a wrong type is one `BadValue` line naming the parameter, not a
    TypeError from deep inside, a value coerced out of recognition, or a str taken as a list."""

    @functools.wraps(func)
    def arguments(*args, **kwargs):  # func's signature and annotations; returns what it got
        return args, kwargs

    validate = pydantic.validate_call(config=STRICT)(arguments)
    parameters = [name for name, p in inspect.signature(func).parameters.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            checked_args, checked_kwargs = validate(*args, **kwargs)
        except pydantic.ValidationError as err:
            raise _bad_value(func.__name__, parameters, typing.get_type_hints(func), err, args,
                             kwargs) from None
        return func(*checked_args, **checked_kwargs)

    return call


def _with_str_paths(annotation: Any) -> Any:
    """`Path` -> `Path | str` (also inside a union): a path may be given as either."""
    if annotation is Path:
        return Union[Path, str]
    if typing.get_origin(annotation) in (Union, types.UnionType) and Path in typing.get_args(
            annotation):
        return Union[(*typing.get_args(annotation), str)]
    return annotation


@functools.cache
def _prepare_options() -> tuple[type[pydantic.BaseModel], dict[str, Any]]:
    """A model of `data.prepare.prepare`'s options (every route's, data/routes/, and its own
    keyword parameters but `dataset` and `out`), strict like the rest, unknown options refused;
    and their annotations."""
    from concutmix_cli.data import routes
    from concutmix_cli.data.prepare import prepare as run_prepare

    hints = typing.get_type_hints(run_prepare)
    annotations = {option.name: _with_str_paths(option.annotation) for option in routes.options()}
    fields = {option.name: (annotations[option.name], option.default)
              for option in routes.options()}
    for name, param in inspect.signature(run_prepare).parameters.items():
        if name in ("dataset", "out") or param.kind is not param.POSITIONAL_OR_KEYWORD \
                and param.kind is not param.KEYWORD_ONLY:
            continue
        annotation = Callbacks if name == "callbacks" else _with_str_paths(hints.get(name, Any))
        annotations[name] = annotation
        fields[name] = (annotation, param.default)
    config = pydantic.ConfigDict(**STRICT, extra="forbid")
    return pydantic.create_model("PrepareOptions", __config__=config, **fields), annotations


@_checked
def prepare(dataset: str, out: Path | str | None = None, **options: Any) -> dict[str, Any]:
    """Prepare a dataset folder (`concutmix prepare`; the options are its keyword arguments,
    e.g. `prepare("folder", "data/pets", root="photos", image_size=32, test_fraction=0.2)`);
    returns the manifest that was written. An unknown option or one of the wrong type is a
    `BadValue` naming it."""
    from concutmix_cli.data.prepare import prepare as run_prepare

    model, annotations = _prepare_options()
    try:
        model.model_validate(options)
    except pydantic.ValidationError as err:
        raise _bad_value("prepare", list(annotations), annotations, err, (), options,
                         what="option") from None
    options = {name: Path(value) if isinstance(value, str) and Path in typing.get_args(
        annotations[name]) else value for name, value in options.items()}
    return run_prepare(dataset, out=Path(out) if out is not None else None, **options).manifest


@_checked
def train(config: Config | dict[str, Any] | Path | str, run_dir: Path | str, *,
          data: PreparedData | Path | str | None = None,
          overrides: list[str] | tuple[str, ...] | None = None,
          callbacks: Callbacks = None, stop: StopFlag | None = None) -> TrainResult:
    """Train a new run into `run_dir` (which must not hold a run yet).

    `config`: a `Config`, a raw dict, or a preset name / TOML path; `overrides`: a list of
    "section.key=value" strings on top (one string alone is refused, not split into
    characters); `data`: a prepared folder or an already loaded `PreparedData` (default: the
    config's data.path)."""
    overrides = list(overrides) if overrides is not None else None
    if isinstance(config, Config):
        cfg = build_config(base=config.model_dump(), overrides=overrides)
    elif isinstance(config, dict):
        cfg = build_config(base=config, overrides=overrides)
    else:
        cfg = build_config(preset=str(config), overrides=overrides)
    if data is not None and not isinstance(data, PreparedData):
        data = load_prepared(Path(data))
    return run(cfg, RunFolder(Path(run_dir)), False, data=data, callbacks=callbacks, stop=stop)


@_checked
def evaluate(run_or_weights: Path | str, *, data: Path | str | None = None, split: str = "test",
             device: str = "auto", callbacks: Callbacks = None) -> dict[str, Any]:
    """Top-1 (overall, many / medium / few), per-class accuracy and ECE of trained weights;
    `callbacks` receive `WorkProgress` events."""
    return evaluate_run(Path(run_or_weights), data=Path(data) if data else None, split=split,
                        device=device, callbacks=callbacks)


@_checked
def predict(run_or_weights: Path | str, images: Paths, *, top_k: int = 5, batch_size: int = 64,
            device: str = "auto", skip_bad: bool = False) -> Predictions:
    """Top-k classes (names, probabilities) of image files, folders or .txt lists of paths;
    `images` is one of them or a list of them."""
    from concutmix_cli.inference import predict_images

    return predict_images(Path(run_or_weights), _paths(images), top_k=top_k,
                          batch_size=batch_size, device=device, skip_bad=skip_bad)


@_checked
def export(run_or_weights: Path | str, format: str, out: Path | str,  # noqa: A002 - the CLI's name
           *, force: bool = False):
    """Write the classifier as `torchscript` or `onnx` and check it by loading it back; an
    existing `out` is replaced only with `force`."""
    from concutmix_cli.exporter import export_model

    return export_model(Path(run_or_weights), format, Path(out), force=force)


@_checked
def inspect_labels(run_or_weights: Path | str, *, data: Path | str | None = None, num: int = 16,
                   seed: int = 0, omega: float | None = None, top_k: int | None = None,
                   device: str = "auto", callbacks: Callbacks = None,
                   per_sample_boxes: bool = False) -> InspectReport:
    """What rectification does to `num` mixed samples of the run's data, as data (one CutMix
    decision per batch, as training draws them, or per sample); `callbacks` receive
    `WorkProgress` events while the samples are drawn."""
    return inspect_run(run_or_weights, data=data, num=num, seed=seed, omega=omega, top_k=top_k,
                       device=device, callbacks=callbacks, per_sample_boxes=per_sample_boxes)


@_checked
def report(runs: Paths, *, group_by: str | None = None, evaluate: bool = True):
    """The last epoch of each run and mean +- sample std per `group_by` value, as a
    `reporting.Report` (`.runs`, `.groups`, `.as_dict()`; `reporting.markdown` formats it).
    `runs`: run folders, or one run folder; what was wrong in a run's files (a cut metrics
    line, say) is in its `.notes`."""
    from concutmix_cli.reporting import build_report

    return build_report(_paths(runs), group_by, evaluate=evaluate)


@_checked
def plot(runs: Paths, out: Path | str, *, fmt: str = "png", split: str = "test",
         device: str = "auto", force: bool = False, callbacks: Callbacks = None
         ) -> dict[str, Path]:
    """Per-class accuracy, learning curves and confusion matrices of `runs` (run folders, or
    one run folder) into folder `out`; returns {what: file}. Needs the `plot` extra
    (matplotlib)."""
    from concutmix_cli.plots import plot_runs

    return plot_runs(_paths(runs), Path(out), fmt, split=split, device=device,
                     force=force, callbacks=callbacks)

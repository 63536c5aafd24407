"""The `concutmix` command line: thin Typer commands over the importable library.

Each command parses options, calls one library function and renders the result with rich
(render.py: the consoles and a printer per kind of result).
User errors (`UserError`, unreadable paths, a full disk) print one line and exit with code 2;
`--debug` anywhere on the command line shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from concutmix_cli import __version__
from concutmix_cli.errors import UserError
from concutmix_cli.events import StopFlag
from concutmix_cli.fileio import json_text
from concutmix_cli.process import Signalled, safe_streams, termination_signals
from concutmix_cli.render import (console, err_console, one_line, print_error, print_eval_report,
                                  print_export, print_inspect_report, print_messages,
                                  print_predictions, print_report, usage_line)
from concutmix_cli.render import warn as _warn

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: smoke]" is text, not rich markup
    help="Long-tailed image recognition with Contrastive CutMix (ConCutMix).",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"concutmix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """prepare a long-tailed benchmark or your own images, train, eval, inspect the rectified
    labels, predict new images, export the classifier."""


# ----------------------------------------------------------------------------- prepare


@app.command()
def prepare(
    dataset: str = typer.Argument(
        ..., help="cifar10-lt, cifar100-lt, imagenet-lt, places-lt, inat2018, synthetic-lt, or "
                  "your own images: folder (one sub-folder per class) or csv (path,label files)"
    ),
    imbalance: float = typer.Option(100.0, "--imbalance", help="imbalance factor n_max / n_min"),
    seed: int = typer.Option(0, help="subset seed (0: LDAM-DRW/BCL protocol; the authors used 10)"),
    out: Optional[Path] = typer.Option(None, help="output folder [default: data/<dataset>-if<IF>]"),
    source: Optional[Path] = typer.Option(None, help="offline CIFAR archive (.npz)"),
    root: Optional[Path] = typer.Option(
        None, help="CIFAR: torchvision download folder [data/torchvision]; lists and csv: the "
                   "image root; folder: the training images, one sub-folder per class"
    ),
    download: bool = typer.Option(True, help="let torchvision download CIFAR into --root"),
    classes: int = typer.Option(10, help="synthetic-lt: number of classes"),
    n_max: Optional[int] = typer.Option(None, "--n-max", help="images of the largest class"),
    train_list: Optional[Path] = typer.Option(None, help="split file: `relative/path label` lines"),
    val_list: Optional[Path] = typer.Option(None),
    test_list: Optional[Path] = typer.Option(None),
    force: bool = typer.Option(False, help="replace an existing output folder"),
    train_csv: Optional[Path] = typer.Option(None, "--train", help="csv: the training path,label file"),
    val: Optional[Path] = typer.Option(None, "--val", help="folder/csv: validation images (a folder "
                                       "of class folders, or a CSV file)"),
    test: Optional[Path] = typer.Option(None, "--test", help="folder/csv: test images (as --val)"),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="folder/csv: hold out this share of each class's training "
                                     "images for validation (drawn with --seed)"),
    test_fraction: Optional[float] = typer.Option(
        None, "--test-fraction", help="folder/csv: hold out this share for the test split"),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="folder/csv: training side; up to 64 stores uint8 arrays "
                                   "(CIFAR-like views), above keeps the files (ImageNet-like "
                                   "views) [default: 224]"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="folder/csv: leave out unreadable "
                                  "files (listed in the manifest) instead of stopping"),
) -> None:
    """Build a long-tailed benchmark folder (images + manifest.json)."""
    from concutmix_cli.data.prepare import prepare as run_prepare
    from concutmix_cli.progress import WorkBar

    with WorkBar(err_console) as bar:
        result = run_prepare(
            dataset, out=out, imbalance=imbalance, seed=seed, source=source, root=root,
            download=download, classes=classes, n_max=n_max, train_list=train_list,
            val_list=val_list, test_list=test_list, force=force, train=train_csv, val=val,
            test=test, image_size=image_size, val_fraction=val_fraction,
            test_fraction=test_fraction, skip_bad=skip_bad, callbacks=bar,
        )
    _print_prepare_summary(result.out, result.manifest)
    for note in result.notes:
        _warn("note", note)


def _print_prepare_summary(out: Path, manifest: dict) -> None:
    counts = manifest["train_counts"]
    groups = manifest["shot_groups"]
    table = Table(title=f"{manifest['dataset']} -> {out}", show_header=False)
    table.add_row("classes", str(manifest["num_classes"]))
    table.add_row("imbalance", f"{manifest['imbalance']:g}")
    table.add_row("seed", str(manifest["seed"]))
    table.add_row("training images", f"{sum(counts):,}")
    for split in ("val", "test"):
        if manifest.get(f"{split}_counts"):
            table.add_row(f"{split} images", f"{sum(manifest[f'{split}_counts']):,}")
    if "shot_thresholds" in manifest:  # a user's own classes: by name, largest first
        _print_own_summary(table, manifest)
        return
    table.add_row("head counts", ", ".join(str(c) for c in counts[:5]))
    table.add_row("tail counts", ", ".join(str(c) for c in counts[-5:]))
    for name in ("many", "medium", "few"):
        table.add_row(f"{name}-shot classes", str(len(groups[name])))
    from concutmix_cli.progress import print_table

    print_table(console, table)


def _print_own_summary(table: Table, manifest: dict) -> None:
    """The long-tail statistics of a user's dataset: per class counts by name, the imbalance
    factor and the shot groups with the thresholds chosen for it."""
    counts, names = manifest["train_counts"], manifest["classes"]
    limits = manifest["shot_thresholds"]
    table.add_row("stored as", "uint8 arrays" if manifest["kind"] == "arrays" else "image files")
    table.add_row("image size", str(manifest["image_size"]))
    rule = ("the published thresholds" if limits["rule"] == "standard"
            else "thirds of the classes by count")
    table.add_row("shot groups", f"many >= {limits['many_min']}, few <= {limits['few_max']} ({rule})")
    for name in ("many", "medium", "few"):
        table.add_row(f"{name}-shot classes", str(len(manifest["shot_groups"][name])))
    if manifest.get("skipped"):
        table.add_row("skipped files", str(len(manifest["skipped"])))
    console.print(table)
    group = {c: g for g, ids in manifest["shot_groups"].items() for c in ids}
    per_class = Table(title="training images per class", title_justify="left")
    for column, justify in (("class", "left"), ("train", "right"), ("val", "right"),
                            ("test", "right"), ("group", "left")):
        per_class.add_column(column, justify=justify)
    for c in sorted(range(len(counts)), key=lambda c: (-counts[c], c)):
        per_class.add_row(escape(names[c]), str(counts[c]), *(
            str(manifest[f"{s}_counts"][c]) if manifest.get(f"{s}_counts") else "-"
            for s in ("val", "test")), group.get(c, ""))
    console.print(per_class)
    for note in manifest.get("notes", []):
        _warn("note", note)
    for skipped in manifest.get("skipped", []):
        _warn("skipped", f"{skipped['path']} ({skipped['reason']})")


# ----------------------------------------------------------------------------- train


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, help="preset name or TOML path [default: smoke]"),
    data: Optional[Path] = typer.Option(None, help="prepared data folder (data.path)"),
    out: Optional[Path] = typer.Option(None, help="run folder [default: runs/<preset>-<time>]"),
    epochs: Optional[int] = typer.Option(None, help="optim.epochs"),
    batch_size: Optional[int] = typer.Option(None, help="optim.batch_size (global)"),
    lr: Optional[float] = typer.Option(None, help="optim.lr"),
    method: Optional[str] = typer.Option(None, help="method.name: ce, cutmix, bcl, concutmix, "
                                         "balanced-softmax"),
    seed: Optional[int] = typer.Option(None, help="runtime.seed"),
    device: Optional[str] = typer.Option(None, help="runtime.device: auto, cpu, cuda"),
    deterministic: Optional[bool] = typer.Option(
        None, "--deterministic/--no-deterministic", help="runtime.deterministic"
    ),
    set_: List[str] = typer.Option([], "--set", help="override: section.key=value (repeatable)"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder"),
    keep: Optional[int] = typer.Option(
        None, "--keep", help="runtime.keep: how many epoch checkpoints to keep [default: 1]"
    ),
    log_every: str = typer.Option(
        "30s", "--log-every", help="not on a terminal: a progress line every N steps (100) or "
        "seconds (30s), besides one per epoch"),
) -> None:
    """Train a model (ConCutMix by default) on a prepared dataset."""
    from concutmix_cli.engine.train import TrainRequest, run_training
    from concutmix_cli.progress import TrainView, parse_every

    every = parse_every(log_every)

    request = TrainRequest(
        preset=preset, out=out, resume=resume, overrides=list(set_),
        shortcuts={
            "data.path": str(data) if data is not None else None,
            "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr,
            "method.name": method, "runtime.seed": seed, "runtime.device": device,
            "runtime.deterministic": deterministic, "runtime.keep": keep,
        },
    )
    stop = StopFlag()
    view = TrainView(console, stop, every)
    view.take_signals()
    try:
        result = run_training(request, callbacks=view, stop=stop)
    finally:
        view.close()
    if result.stopped:
        console.print(f"stopped; resume with: concutmix train --resume {result.run_dir}",
                      soft_wrap=True)  # one line: a script may read the command from it
        raise SystemExit(result.exit_code)
    console.print(f"done: {result.run_dir}", soft_wrap=True)


# ----------------------------------------------------------------------------- eval


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="a run folder or a .safetensors weights file"),
    data: Optional[Path] = typer.Option(None, help="prepared data folder [default: the run's]"),
    split: str = typer.Option("test", help="test or val"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON report here"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    per_class: Optional[bool] = typer.Option(
        None, "--per-class/--no-per-class",
        help="show precision and recall of each class by name [default: up to 20 classes]"),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="also draw per-class accuracy, the confusion matrix and (for a run "
        "folder) the learning curves into this folder (needs the plot extra)"),
    plot_format: str = typer.Option("png", "--format", help="--plot: png, svg or pdf"),
    force: bool = typer.Option(False, help="replace an --out file or --plot pictures that exist"),
) -> None:
    """Top-1 overall, many/medium/few, balanced accuracy, macro-F1, per-class precision and
    recall, and ECE of trained weights."""
    from concutmix_cli.engine.evaluate import predict_run, report_of
    from concutmix_cli.outputs import check_outputs, run_inputs
    from concutmix_cli.plots import picture_of, plan_eval_pictures, write_pictures
    from concutmix_cli.progress import WorkBar

    out = check_outputs({"--out": out}, force=force,
                        **run_inputs(run, data)).get("--out")  # before any work
    if plot is not None:  # its files checked before any work too
        label, rows = plan_eval_pictures(run, plot, plot_format, force, data, print_messages)
    with WorkBar(err_console) as bar:
        found = predict_run(run, data=data, split=split, device=device, callbacks=bar)
    report = report_of(found)
    if plot is not None:
        written = write_pictures([picture_of(label, rows, found)], plot, plot_format)
        for path in written.values():
            err_console.print(f"wrote {escape(str(path))}", highlight=False)
    if out is not None:
        from concutmix_cli.fileio import atomic_write_text

        atomic_write_text(out, json_text(report, indent=2))
    if as_json:
        typer.echo(json_text(report))
    else:
        print_eval_report(report, per_class)


# ----------------------------------------------------------------------------- inspect-labels


@app.command("inspect-labels")
def inspect_labels(
    run: Path = typer.Argument(..., help="a run folder or a .safetensors weights file"),
    data: Optional[Path] = typer.Option(None, help="prepared data folder [default: the run's]"),
    num: int = typer.Option(16, "--num", help="how many mixed samples to draw"),
    seed: int = typer.Option(0, help="seed of the draws"),
    omega: Optional[float] = typer.Option(None, help="override omega [default: the run's]"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="override top_k [default: the run's]"),
    out: Optional[Path] = typer.Option(None, help="write all tensors to FILE.safetensors"),
    image: Optional[Path] = typer.Option(None, help="write a captioned PNG grid"),
    csv: Optional[Path] = typer.Option(None, help="write one row per sample"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    force: bool = typer.Option(False, help="replace --out / --image / --csv files that exist"),
    per_sample_boxes: bool = typer.Option(
        False, help="one lambda and box per sample (a range of ratios); training, and the "
        "default, draw one per batch of the run's batch size"),
) -> None:
    """Show what label rectification does to real mixed samples."""
    from concutmix_cli.fileio import atomic_write_bytes, atomic_write_text
    from concutmix_cli.inspect import MAX_TILES, check_num, dump_bytes, grid_png_bytes, inspect_run
    from concutmix_cli.inspect import rows_csv_text
    from concutmix_cli.outputs import check_outputs, run_inputs

    check_num(num)  # before any work, as the other checks of the options
    if image is not None and num > MAX_TILES:
        raise UserError(f"--image draws at most {MAX_TILES} tiles (got --num {num:,}); use a "
                        f"smaller --num with --image, or --csv / --out for many samples")
    targets = check_outputs({"--out": out, "--image": image, "--csv": csv}, force=force,
                            **run_inputs(run, data))
    out, image, csv = (targets.get(option) for option in ("--out", "--image", "--csv"))
    from concutmix_cli.progress import WorkBar

    with WorkBar(err_console) as bar:  # a bar only for draws long enough to need one
        report = inspect_run(run, data=data, num=num, seed=seed, omega=omega, top_k=top_k,
                             device=device, callbacks=bar if num >= 256 else None,
                             per_sample_boxes=per_sample_boxes)
    if out is not None:
        atomic_write_bytes(out, dump_bytes(report.result))
    if image is not None:
        atomic_write_bytes(image, grid_png_bytes(report.result))
    if csv is not None:
        atomic_write_text(csv, rows_csv_text(report.rows))
    if as_json:
        typer.echo(json_text(report.summary))
    else:
        print_inspect_report(report)


# ----------------------------------------------------------------------------- predict, export


@app.command()
def predict(
    run: Path = typer.Argument(..., help="a run folder or a .safetensors weights file"),
    images: List[Path] = typer.Argument(
        ..., help="image files, folders of images (searched recursively) or .txt lists of paths"),
    top_k: int = typer.Option(5, "--top-k", help="how many classes to show per image"),
    batch_size: int = typer.Option(64, "--batch-size", help="images per forward pass"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV (path, class_1, probability_1, ...)"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON (the CSV with --csv or a "
                                                  ".csv name) here"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="leave out unreadable images "
                                  "(named on stderr) instead of stopping"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    force: bool = typer.Option(False, help="replace an --out file that exists"),
) -> None:
    """Top-k classes, by name, with probabilities for new images."""
    from concutmix_cli.fileio import atomic_write_text
    from concutmix_cli.inference import (collect_images, predict_images, predictions_csv,
                                         predictions_json)
    from concutmix_cli.outputs import check_outputs

    if as_json and as_csv:
        raise UserError("--json and --csv: choose one output format")
    if out is not None:  # the images themselves, also those a folder or a .txt list names
        out = check_outputs({"--out": out}, reads=[run, *images, *collect_images(list(images))],
                            force=force)["--out"]
    from concutmix_cli.progress import WorkBar

    with WorkBar(err_console) as bar:
        result = predict_images(run, list(images), top_k=top_k, batch_size=batch_size,
                                device=device, skip_bad=skip_bad, callbacks=bar)
    csv_text = predictions_csv(result) if as_csv or (out and out.suffix.lower() == ".csv") else None
    json_report = json_text(predictions_json(result), ensure_ascii=False)
    if out is not None:
        atomic_write_text(out, csv_text if csv_text is not None else json_report + "\n")
    for skipped in result.skipped:
        _warn("skipped", f"{skipped['path']} ({skipped['reason']})")
    if as_json:
        typer.echo(json_report)
    elif as_csv:
        typer.echo(csv_text, nl=False)
    else:
        print_predictions(result)


@app.command("export")
def export(
    run: Path = typer.Argument(..., help="a run folder or a .safetensors weights file"),
    format_: str = typer.Option(..., "--format", help="torchscript or onnx (needs the onnx extra)"),
    out: Path = typer.Option(..., help="the file to write"),
    force: bool = typer.Option(False, help="replace an --out file that exists"),
) -> None:
    """The classifier (normalization inside) as TorchScript or ONNX, checked by loading it back."""
    from concutmix_cli.exporter import export_model

    print_export(export_model(run, format_, out, force=force))  # checks --out before any work


# ----------------------------------------------------------------------------- plot, report


@app.command()
def plot(
    runs: List[Path] = typer.Argument(..., help="run folders (several: compared on one figure)"),
    out: Path = typer.Option(..., "--out", help="folder for the pictures (created if missing)"),
    plot_format: str = typer.Option("png", "--format", help="png, svg or pdf"),
    split: str = typer.Option("test", help="test or val"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    force: bool = typer.Option(False, help="replace pictures that exist"),
) -> None:
    """Per-class accuracy against training count, learning curves, confusion matrices."""
    from concutmix_cli.plots import plot_runs
    from concutmix_cli.progress import WorkBar

    with WorkBar(err_console) as bar:
        written = plot_runs(list(runs), out, plot_format, split=split, device=device,
                            force=force, callbacks=[bar, print_messages])
    for what, path in written.items():
        console.print(f"{what}: {escape(str(path))}", highlight=False)


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="run folders"),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", help="mean +- std per value of this setting: method, preset or a "
        "config key such as model.arch"),
    as_markdown: bool = typer.Option(False, "--markdown", help="print GitHub tables"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV (fractions, not percent)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    evaluate: bool = typer.Option(
        True, "--eval/--no-eval", help="evaluate a run whose balanced accuracy is neither stored "
        "nor equal to top-1 (unequal test classes)"),
) -> None:
    """Last-epoch top-1, many/medium/few, balanced accuracy and ECE of runs; mean +- std per group."""
    from concutmix_cli.reporting import build_report, csv_text, markdown

    if sum((as_markdown, as_csv, as_json)) > 1:
        raise UserError("give at most one of --markdown, --csv and --json")
    result = build_report(list(runs), group_by, evaluate=evaluate)
    if as_json:
        typer.echo(json_text(result.as_dict(), indent=2))
    elif as_markdown:
        typer.echo(markdown(result), nl=False)
    elif as_csv:
        typer.echo(csv_text(result), nl=False)
    else:
        print_report(result)


# ----------------------------------------------------------------------------- entry point


def _click_exceptions():
    """Typer's bundled click (typer >= 0.17), else click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer depends on click
        from click import exceptions
    return exceptions


def _fail(message: str, code: int) -> None:
    print_error(message)
    sys.exit(code)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    safe_streams()
    with termination_signals():
        _run(debug)


def _run(debug: bool) -> None:
    click_exc = _click_exceptions()
    try:
        # not standalone: usage errors come back to us instead of as click's boxed message
        code = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError as err:  # `concutmix` or a group without arguments
        typer.echo(err.format_message())
        sys.exit(2)
    except click_exc.ClickException as err:  # usage errors: bad value, unknown option/command
        if debug:
            raise
        _fail(usage_line(err), 2)
    except (UserError, OSError) as err:
        if debug:
            raise
        _fail(one_line(err), 2)
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            raise
        err_console.print("[bold red]interrupted[/]", highlight=False)
        sys.exit(130)
    except Signalled as err:
        err_console.print(f"[bold red]interrupted[/] ({err.name})", highlight=False)
        sys.exit(err.exit_code)
    except Exception as err:  # noqa: BLE001 - a bug, not bad input: still one line, exit 1
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        _fail(f"internal error: {type(err).__name__}: {first} "
              "(run again with --debug for the traceback, and please report it)", 1)
    else:
        if code == 130:  # typer turns Ctrl-C during a command into exit code 130
            err_console.print("[bold red]interrupted[/]", highlight=False)
        if isinstance(code, int) and code:
            sys.exit(code)

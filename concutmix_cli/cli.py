"""The `concutmix` command line: thin Typer commands over the importable library.

Each command parses options, calls one library function and renders the result with rich.
User errors (`UserError`, unreadable paths, a full disk) print one line and exit with code 2;
`--debug` anywhere on the command line shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from concutmix_cli import __version__
from concutmix_cli.errors import UserError
from concutmix_cli.fileio import json_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: smoke]" is text, not rich markup
    help="Long-tailed image recognition with Contrastive CutMix (ConCutMix).",
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"concutmix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """prepare a long-tailed benchmark, train, eval, and inspect the rectified labels."""


# ----------------------------------------------------------------------------- prepare


@app.command()
def prepare(
    dataset: str = typer.Argument(
        ..., help="cifar10-lt, cifar100-lt, imagenet-lt, places-lt, inat2018 or synthetic-lt"
    ),
    imbalance: float = typer.Option(100.0, "--imbalance", help="imbalance factor n_max / n_min"),
    seed: int = typer.Option(0, help="subset seed (0: LDAM-DRW/BCL protocol; the authors used 10)"),
    out: Optional[Path] = typer.Option(None, help="output folder [default: data/<dataset>-if<IF>]"),
    source: Optional[Path] = typer.Option(None, help="offline CIFAR archive (.npz)"),
    root: Optional[Path] = typer.Option(
        None, help="CIFAR: torchvision download folder [data/torchvision]; lists: the image root"
    ),
    download: bool = typer.Option(True, help="let torchvision download CIFAR into --root"),
    classes: int = typer.Option(10, help="synthetic-lt: number of classes"),
    n_max: Optional[int] = typer.Option(None, "--n-max", help="images of the largest class"),
    train_list: Optional[Path] = typer.Option(None, help="split file: `relative/path label` lines"),
    val_list: Optional[Path] = typer.Option(None),
    test_list: Optional[Path] = typer.Option(None),
    force: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Build a long-tailed benchmark folder (images + manifest.json)."""
    from concutmix_cli.data.prepare import prepare as run_prepare

    result = run_prepare(
        dataset, out=out, imbalance=imbalance, seed=seed, source=source, root=root,
        download=download, classes=classes, n_max=n_max, train_list=train_list,
        val_list=val_list, test_list=test_list, force=force,
    )
    _print_prepare_summary(result.out, result.manifest)


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
    table.add_row("head counts", ", ".join(str(c) for c in counts[:5]))
    table.add_row("tail counts", ", ".join(str(c) for c in counts[-5:]))
    for name in ("many", "medium", "few"):
        table.add_row(f"{name}-shot classes", str(len(groups[name])))
    console.print(table)


# ----------------------------------------------------------------------------- train


def _not_yet(name: str) -> None:
    raise UserError(f"`concutmix {name}` is not implemented yet")


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, help="preset name or TOML path [default: smoke]"),
    data: Optional[Path] = typer.Option(None, help="prepared data folder (data.path)"),
    out: Optional[Path] = typer.Option(None, help="run folder [default: runs/<preset>-<time>]"),
    epochs: Optional[int] = typer.Option(None, help="optim.epochs"),
    batch_size: Optional[int] = typer.Option(None, help="optim.batch_size (global)"),
    lr: Optional[float] = typer.Option(None, help="optim.lr"),
    method: Optional[str] = typer.Option(None, help="method.name: ce, cutmix, bcl, concutmix"),
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
) -> None:
    """Train a model (ConCutMix by default) on a prepared dataset."""
    from concutmix_cli.engine.train import TrainRequest, run_training

    request = TrainRequest(
        preset=preset, out=out, resume=resume, overrides=list(set_),
        shortcuts={
            "data.path": str(data) if data is not None else None,
            "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr,
            "method.name": method, "runtime.seed": seed, "runtime.device": device,
            "runtime.deterministic": deterministic, "runtime.keep": keep,
        },
    )
    run_training(request, console=console)


# ----------------------------------------------------------------------------- eval


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="a run folder or a .safetensors weights file"),
    data: Optional[Path] = typer.Option(None, help="prepared data folder [default: the run's]"),
    split: str = typer.Option("test", help="test or val"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON report here"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
) -> None:
    """Top-1 overall, many/medium/few, per-class accuracy and ECE of trained weights."""
    from concutmix_cli.engine.evaluate import evaluate_run
    from concutmix_cli.outputs import check_outputs

    check_outputs({"--out": out}, reads=[run, *([data] if data else [])])  # before any work
    report = evaluate_run(run, data=data, split=split, device=device)
    if out is not None:
        from concutmix_cli.fileio import atomic_write_text

        atomic_write_text(Path(out), json_text(report, indent=2))
    if as_json:
        typer.echo(json_text(report))
        return
    table = Table(title=f"{report['source']} on {report['split']} ({report['num_samples']:,} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("overall", "many", "medium", "few"):
        value = report[key]
        table.add_row(f"top-1 {key}", "-" if value is None else f"{100 * value:.2f}%")
    table.add_row("ECE (15 bins)", f"{report['ece']:.4f}")
    table.add_row("epoch", str(report.get("epoch")))
    console.print(table)
    for note in report.get("notes", []):
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


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
) -> None:
    """Show what label rectification does to real mixed samples."""
    try:
        from concutmix_cli import inspect as inspect_mod
    except ImportError:
        _not_yet("inspect-labels")
    inspect_mod.run_inspect(
        run, data=data, num=num, seed=seed, omega=omega, top_k=top_k, out=out, image=image,
        csv=csv, as_json=as_json, device=device, console=console,
    )


# ----------------------------------------------------------------------------- entry point


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError):
        what = err.strerror or str(err)
        where = f": {err.filename}" if err.filename else ""
        hint = " (free some space and run again)" if err.errno == errno.ENOSPC else ""
        text = f"{what}{where}{hint}"
    else:
        text = str(err)
    return " ".join(text.split())  # one line, whatever the message holds


def _click_exceptions():
    """Typer's bundled click (typer >= 0.17), else click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer depends on click
        from click import exceptions
    return exceptions


def _usage_line(err) -> str:
    """A click usage error (bad option value, unknown command or option) as our one line."""
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "concutmix"
    return f"{_one_line(Exception(err.format_message()))} (see `{where} --help`)"


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
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
        _fail(_usage_line(err), 2)
    except (UserError, OSError) as err:
        if debug:
            raise
        _fail(_one_line(err), 2)
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            raise
        err_console.print("[bold red]interrupted[/]", highlight=False)
        sys.exit(130)
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

"""Pictures of runs, as long-tailed results are read: per-class test accuracy against the class's
training count, the learning curves of metrics.jsonl, and confusion matrices. Several runs go on
one figure so that methods can be compared.

matplotlib is the optional `plot` extra; figures are made with its object API (no pyplot, no
global state) and written atomically.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from concutmix_cli.errors import UserError

FORMATS = ("png", "svg", "pdf")
GROUP_COLOURS = {"many": "#dbe9f6", "medium": "#fdf1d6", "few": "#f9dcdc"}
ANNOTATE_MAX = 20
"""Confusion matrices of up to this many classes show their values and class names; larger ones
are plain heat maps."""


def require_matplotlib():
    """matplotlib's Figure class, or one line that names the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib, which is not installed: "
                        "pip install 'concutmix[plot]'") from None
    return Figure


def check_format(fmt: str):
    """A picture format `write_pictures` knows and matplotlib installed, or one line saying
    which is not; returns matplotlib's Figure class."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    return require_matplotlib()


@dataclass
class RunPicture:
    """What the pictures of one run need."""

    label: str
    rows: list[dict[str, Any]]
    """metrics.jsonl (may be empty: weights without a run folder)."""
    train_counts: list[int]
    classes: list[str]
    shot_groups: dict[str, list[int]]
    per_class: list[float | None] | None = None
    confusion: torch.Tensor | None = None
    """[C, C] counts, row = true class, column = predicted."""


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels * num_classes + predicted,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def by_count(train_counts: list[int]) -> list[int]:
    """Class ids from the most to the fewest training images (ties by id)."""
    return sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))


def _bands(ax, order: list[int], groups: dict[str, list[int]]) -> None:
    """Shade the many / medium / few classes along an axis ordered by `order`."""
    where = {c: i for i, c in enumerate(order)}
    for name in ("many", "medium", "few"):
        positions = sorted(where[c] for c in groups.get(name, []) if c in where)
        if positions:
            ax.axvspan(positions[0] - 0.5, positions[-1] + 0.5, color=GROUP_COLOURS[name],
                       zorder=0, label=f"{name}-shot")


def per_class_figure(pictures: list[RunPicture]):
    """Test accuracy of every class, classes sorted by training count, one line per run, the
    training counts as grey bars on a log axis behind them."""
    Figure = require_matplotlib()
    first = pictures[0]
    order = by_count(first.train_counts)
    x = list(range(len(order)))
    fig = Figure(figsize=(max(6.0, min(16.0, 0.12 * len(order) + 5)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    counts_ax = ax.twinx()  # drawn below `ax`: the bands, then the count bars, then the lines
    _bands(counts_ax, order, first.shot_groups)
    counts_ax.bar(x, [first.train_counts[c] for c in order], color="0.55", alpha=0.45, width=0.8,
                  label="training images")
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("training images (log)")
    ax.set_zorder(counts_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    for pic in pictures:
        acc = [None if pic.per_class is None or pic.per_class[c] is None else 100 * pic.per_class[c]
               for c in order]
        few = [a for c, a in zip(order, acc) if c in set(pic.shot_groups.get("few", [])) and a is not None]
        note = f" (few {sum(few) / len(few):.1f}%)" if few else ""
        ax.plot(x, [float("nan") if a is None else a for a in acc], marker="o",
                markersize=3 if len(order) > 30 else 5, linewidth=1.2, label=pic.label + note)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("class, sorted by training count")
    ax.set_ylabel("test accuracy (%)")
    if len(order) <= ANNOTATE_MAX:
        ax.set_xticks(x, [first.classes[c] for c in order], rotation=45, ha="right", fontsize=8)
    handles = [h for a in (ax, counts_ax) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title("per-class test accuracy against training count")
    return fig


CURVES = (
    ("loss", "training loss", ("loss", "loss_cls", "loss_bcl")),
    ("lr", "learning rate", ("lr",)),
    ("acc", "test top-1 (%)", ("test_top1",)),
    ("groups", "test many / medium / few (%)", ("test_many", "test_medium", "test_few")),
    ("train", "train accuracy (%)", ("train_acc",)),
    ("rect", "mean omega*rho", ("rect_weight",)),
)
STYLES = ("-", "--", ":")


def curves_figure(pictures: list[RunPicture]):
    """The learning curves of metrics.jsonl: loss terms, lr, test top-1 and per group, train
    accuracy, omega*rho; a colour per run, a line style per term."""
    Figure = require_matplotlib()
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    colours = [f"C{i % 10}" for i in range(len(pictures))]
    for ax, (_, title, keys) in zip(axes, CURVES):
        drawn = False
        for pic, colour in zip(pictures, colours):
            for key, style in zip(keys, STYLES):
                points = [(r["epoch"], r[key]) for r in pic.rows if r.get(key) is not None]
                if not points:
                    continue
                scale = 100 if key.startswith(("test_", "train_acc")) else 1
                ax.plot([e for e, _ in points], [scale * v for _, v in points], style,
                        color=colour, marker="." if len(points) < 30 else None,
                        label=f"{pic.label} {key}" if len(keys) > 1 else pic.label)
                drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return fig


def confusion_figure(pic: RunPicture):
    """The row-normalized confusion matrix, classes sorted by training count (a heat map for
    many classes; values and names for up to ANNOTATE_MAX)."""
    Figure = require_matplotlib()
    order = by_count(pic.train_counts)
    counts = pic.confusion[order][:, order].double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(order)
    size = 5.5 if n <= ANNOTATE_MAX else 8.0
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if n <= ANNOTATE_MAX:
        names = [pic.classes[c] for c in order]
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if rates[i, j] > 0.5 else "white")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted class (sorted by training count)")
    ax.set_ylabel("true class (sorted by training count)")
    ax.set_title(f"{pic.label}: confusion matrix", fontsize=10)
    return fig


def figure_bytes(fig, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # a fixed date and no software stamp: the same run gives the same SVG/PDF bytes
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    fig.savefig(buffer, format=fmt, dpi=120, metadata=metadata[fmt])
    return buffer.getvalue()


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label).strip("-") or "run"


def planned_files(out: Path, labels: list[str], fmt: str, with_predictions: bool,
                  with_curves: bool) -> dict[str, Path]:
    """The files `write_pictures` will write, by what they show."""
    files = {}
    if with_predictions:
        files["per-class accuracy"] = out / f"per_class.{fmt}"
    if with_curves:
        files["learning curves"] = out / f"curves.{fmt}"
    if with_predictions:
        names: set[str] = set()
        for label in labels:
            name = _slug(label)
            while name in names:  # "a/b" and "a-b" would share a file name
                name += "_"
            names.add(name)
            files[f"confusion {label}"] = out / f"confusion-{name}.{fmt}"
    return files


def write_pictures(pictures: list[RunPicture], out: Path, fmt: str = "png") -> dict[str, Path]:
    """Draw every picture the runs allow into folder `out`; returns {what: path}."""
    from concutmix_cli.fileio import atomic_write_bytes

    check_format(fmt)
    with_predictions = all(p.per_class is not None for p in pictures)
    with_curves = any(p.rows for p in pictures)
    files = planned_files(out, [p.label for p in pictures], fmt, with_predictions, with_curves)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if with_predictions:
        figures["per-class accuracy"] = per_class_figure(pictures)
        for pic in pictures:
            figures[f"confusion {pic.label}"] = confusion_figure(pic)
    if with_curves:
        figures["learning curves"] = curves_figure([p for p in pictures if p.rows])
    for what, path in files.items():  # through a symlink to a regular file, as checked
        atomic_write_bytes(Path(os.path.realpath(path)), figure_bytes(figures[what], fmt))
    return files


def picture_of(label: str, rows: list[dict[str, Any]], found) -> RunPicture:
    """A `RunPicture` from a run's metrics rows and its predictions (`evaluate.RunPredictions`)."""
    from concutmix_cli.engine.evaluate import accuracy_report

    manifest = found.data.manifest
    report = accuracy_report(found.probs, found.labels, manifest["shot_groups"])
    num_classes = found.probs.shape[1]
    return RunPicture(label, rows, list(manifest["train_counts"]), list(found.data.classes),
                      manifest["shot_groups"], report["per_class"],
                      confusion_matrix(found.probs.argmax(dim=1), found.labels, num_classes))


def check_targets(files: dict[str, Path], force: bool, reads: list[Path],
                  data: list[Path | None] = ()) -> None:
    """Before any work: no picture replaces a file unless `force`, and never one that a run or
    a prepared dataset owns, a special file, or one the command reads (outputs.check_outputs)."""
    from concutmix_cli.outputs import check_outputs

    for path in files.values():
        if path.parent.exists() and not path.parent.is_dir():
            raise UserError(f"--out {path.parent} is a file; give a folder for the pictures")
    for path in files.values():
        check_outputs({"--out": path}, reads=list(reads), force=force, data=data)


def plan_eval_pictures(run: Path, out: Path, fmt: str = "png", force: bool = False,
                       data: Path | None = None, callbacks=None) -> tuple[str, list[dict[str, Any]]]:
    """The label and metrics rows of the pictures of one evaluated run (`eval --plot`), with
    the files they go to checked before any work. `run` is a run folder or a weights file
    (no learning curves); `callbacks` receive a `Message` per note on the run's metrics."""
    from concutmix_cli.events import Message, emitter
    from concutmix_cli.outputs import is_run_folder, run_inputs
    from concutmix_cli.runs import read_run

    check_format(fmt)
    record = read_run(run) if run.is_dir() and is_run_folder(run) else None
    rows = record.rows if record is not None else []
    emit = emitter(callbacks)
    for note in record.notes if record is not None else []:
        emit(Message(note, "note"))
    label = (run.resolve().name if run.is_dir() else run.stem) or "run"
    check_targets(planned_files(out, [label], fmt, True, bool(rows)), force,
                  **run_inputs(run, data))
    return label, rows


def plot_runs(paths: list[Path], out: Path, fmt: str = "png", split: str = "test",
              device: str = "auto", force: bool = False, callbacks=None) -> dict[str, Path]:
    """Evaluate each run's last.safetensors on `split` and draw the pictures into `out`
    (per-class accuracy and learning curves of all runs, a confusion matrix each). `callbacks`
    receive `WorkProgress` events and a `Message` per note on a run's metrics."""
    from concutmix_cli.engine.evaluate import predict_run
    from concutmix_cli.runs import read_runs

    check_format(fmt)  # before the evaluations
    from concutmix_cli.outputs import recorded_data

    records = read_runs(paths)
    check_targets(planned_files(out, [r.label for r in records], fmt, True, True), force,
                  [Path(p) for p in paths], [recorded_data(Path(p)) for p in paths])
    first_counts = records[0].manifest.get("train_counts")
    for record in records[1:]:
        if record.manifest.get("train_counts") != first_counts:
            raise UserError(f"{record.path} trained on other data than {records[0].path} "
                            "(other class counts); plot runs of one dataset together")
    from concutmix_cli.events import Message, emitter

    emit = emitter(callbacks)
    for record in records:  # what of metrics.jsonl could not be drawn (a cut line, a gap)
        for note in record.notes:
            emit(Message(f"{record.label}: {note}", "note"))
    pictures = [picture_of(r.label, r.rows, predict_run(r.path, split=split, device=device,
                                                        callbacks=callbacks))
                for r in records]
    return write_pictures(pictures, out, fmt)

"""How the CLI shows the library's results with rich: the two consoles it prints on (results on
stdout; notes, bars and errors on stderr) and one function per kind of result.

Nothing here computes a result or checks an option: each function takes what a library function
returned and prints it. cli.py parses the command line, calls the library and hands the result
here (the `prepare` summary is printed by cli.py itself).
"""

from __future__ import annotations

import errno

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from concutmix_cli.progress import print_table

console = Console()
err_console = Console(stderr=True)


# ----------------------------------------------------------------------------- notes and errors


def warn(kind: str, text: str) -> None:
    """One stderr line (not wrapped: scripts grep it) with a coloured kind."""
    err_console.print(f"[yellow]{kind}:[/] {escape(text)}", highlight=False, soft_wrap=True)


def print_messages(event) -> None:
    """A library's `Message` events (notes) as stderr lines; other events are not for us."""
    from concutmix_cli.events import Message

    if isinstance(event, Message):
        warn(event.kind or "note", event.text)


def _note(where: Console, text: str) -> None:
    where.print(f"[yellow]note:[/] {escape(text)}", highlight=False)


def one_line(err: BaseException) -> str:
    """An error as one line; a library parameter it names is shown as the option (`--top-k`)."""
    param = getattr(err, "param", None)
    if param and str(err).startswith(param):  # the library names its parameter; we, the option
        return one_line(Exception(f"--{param.replace('_', '-')}{str(err)[len(param):]}"))
    if isinstance(err, OSError):
        what = err.strerror or str(err)
        where = f": {err.filename}" if err.filename else ""
        hint = " (free some space and run again)" if err.errno == errno.ENOSPC else ""
        text = f"{what}{where}{hint}"
    else:
        text = str(err)
    return " ".join(text.split())  # one line, whatever the message holds


def usage_line(err) -> str:
    """A click usage error (bad option value, unknown command or option) as our one line."""
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "concutmix"
    return f"{one_line(Exception(err.format_message()))} (see `{where} --help`)"


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- eval


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_eval_report(report: dict, per_class: bool | None = None) -> None:
    """`evaluate.report_of`'s metrics as a table, the per-class table (`per_class`; None: up to
    20 classes) and the notes on stderr."""
    table = Table(title=f"eval: {report['split']} split, {report['num_samples']:,} images",
                  title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold")
    for key in ("overall", "many", "medium", "few"):
        table.add_row(f"top-1 {key}", percent(report[key]))
    table.add_row("balanced accuracy", percent(report["balanced_accuracy"]))
    table.add_row("macro-F1", percent(report["macro_f1"]))
    table.add_row("ECE (15 bins)", "-" if report["ece"] is None else f"{report['ece']:.4f}")
    table.add_row("epoch", str(report.get("epoch")))
    table.add_row("weights", escape(report["source"]))
    print_table(console, table)
    if per_class if per_class is not None else len(report["classes"]) <= 20:
        print_per_class(report)
    for note in report.get("notes", []):
        _note(err_console, note)


def print_per_class(report: dict) -> None:
    table = Table(title="per class", title_justify="left")
    for column, justify in (("class", "left"), ("images", "right"), ("precision", "right"),
                            ("recall", "right")):
        table.add_column(column, justify=justify)
    for name, n, precision, recall in zip(report["classes"], report["per_class_support"],
                                          report["per_class_precision"],
                                          report["per_class_recall"]):
        table.add_row(escape(name), str(n), percent(precision), percent(recall))
    print_table(console, table)


# ----------------------------------------------------------------------------- inspect-labels


def fmt3(x: float) -> str:
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def print_inspect_report(report) -> None:
    """The table of samples, the per-group summary and the notes of an `InspectReport`."""
    from concutmix_cli.inspect import GROUPS

    result, rows, summary, notes = report.result, report.rows, report.summary, report.notes
    meta = result.meta
    title = (f"{meta.get('source', 'model')} (epoch {meta.get('epoch')}): {result.num} mixed "
             f"samples, seed {result.seed}, omega {result.omega:.4g}, top_k {result.top_k}")
    table = Table(title=escape(title), title_justify="left")
    for name, justify in (("#", "right"), ("class a", "left"), ("lam", "right"),
                          ("class b", "left"), ("semantic top-3", "left"),
                          ("omega*rho", "right"), ("max |rect-area|", "right"),
                          ("prediction", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "semantic top-3")
    for row in rows:
        sem = ", ".join(f"{row[f'sem{j}']} {row[f'sem{j}_weight']:.2f}" for j in (1, 2, 3)
                        if row[f"sem{j}"])
        table.add_row(
            str(row["sample"]), escape(row["class_a"]), f"{row['lam']:.2f}", escape(row["class_b"]),
            escape(sem), fmt3(row["omega_rho"]), fmt3(row["max_change"]),
            escape(f"{row['prediction']} {row['prediction_prob']:.2f}"),
        )
    print_table(console, table)

    stats = Table(title="summary (groups: shot group of class a; head = many, tail = few)",
                  title_justify="left")
    for name in ("group", "n", "mean omega*rho", "max omega*rho", "mean L1 |rect-area|",
                 "sem top-1 = a", "= b", "neither"):
        stats.add_column(name, justify="left" if name == "group" else "right", no_wrap=True)
    labels = {"all": "all", "many": "head (many)", "medium": "medium", "few": "tail (few)"}
    for key in ("all", *GROUPS):
        s = summary[key]
        if s["n"] == 0:
            stats.add_row(labels[key], "0", *["-"] * 6)
            continue
        stats.add_row(
            labels[key], str(s["n"]), fmt3(s["omega_rho_mean"]), fmt3(s["omega_rho_max"]),
            fmt3(s["l1_mean"]), f"{100 * s['semantic_top1_a']:.0f}%",
            f"{100 * s['semantic_top1_b']:.0f}%", f"{100 * s['semantic_top1_neither']:.0f}%",
        )
    print_table(console, stats)
    for note in notes:
        _note(console, note)


# ----------------------------------------------------------------------------- predict, export


def print_predictions(result) -> None:
    """`inference.predict_images`' rows: each image's top class and the next ones."""
    table = Table(title=escape(f"{result.source} (epoch {result.epoch}): {len(result.rows)} "
                               "image(s)"), title_justify="left")
    for column, justify in (("image", "left"), ("class", "left"), ("probability", "right"),
                            ("next", "left")):
        table.add_column(column, justify=justify)
    for row in result.rows:
        first, rest = row["top"][0], row["top"][1:]
        table.add_row(escape(row["path"]), escape(first["class"]), f"{first['probability']:.3f}",
                      escape(", ".join(f"{t['class']} {t['probability']:.3f}" for t in rest)))
    console.print(table)


def print_export(result) -> None:
    """What `exporter.export_model` wrote and how closely the loaded-back model agrees."""
    if result.max_difference is not None:
        console.print(f"wrote {escape(str(result.out))} ({result.format}); loaded back with "
                      f"{result.checked_with}: logits within {result.max_difference:.1e} of the "
                      "original's (relative to their scale)", highlight=False, soft_wrap=True)
    else:
        console.print(f"wrote {escape(str(result.out))} ({result.format})", highlight=False)
        warn("note", result.note or "")


# ----------------------------------------------------------------------------- report


def print_report(result) -> None:
    """`reporting.build_report`'s runs (and groups) as tables; each run's notes on stderr."""
    from concutmix_cli.reporting import group_table_rows, run_table_rows

    title = "last epoch, test split (accuracies in %)"
    tables = [(title, *run_table_rows(result))]
    if result.groups:
        tables.append(("mean ± sample std per group", *group_table_rows(result)))
    for caption, header, body in tables:
        table = Table(title=caption, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 or name == "method" else "right",
                             no_wrap=i > 0, overflow="fold")
        for row in body:
            table.add_row(*(escape(cell) for cell in row))
        print_table(console, table)
    for row in result.runs:
        for note in row.notes:
            err_console.print(f"[yellow]note:[/] {escape(row.run)}: {escape(note)}", highlight=False)

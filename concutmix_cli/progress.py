"""How the CLI shows the library's events (events.py): progress bars on a terminal, short lines in
a log file or pipe, and tables at the width of their content. The library itself draws nothing.

Why two modes: a bar redrawn in place is what a person at a terminal wants; in CI or a log file it
would be noise (or nothing, being transient), so there a line every so many steps or seconds and
one per epoch stand in for it, each within the console's width.
"""

from __future__ import annotations

import signal
import textwrap
import time

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement

from concutmix_cli.errors import UserError
from concutmix_cli.events import EpochDone, EpochStarted, Message, StepDone, StopFlag, WorkProgress
from concutmix_cli.process import ignored


def parse_every(text: str) -> tuple[str, float]:
    """`--log-every`: "30s" (seconds) or "100" (steps) -> ("seconds", 30.0) / ("steps", 100)."""
    value = text.strip().lower()
    unit = "seconds" if value.endswith("s") else "steps"
    try:
        number = float(value[:-1] if unit == "seconds" else value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf") or (unit == "steps" and number != int(number)):
        raise UserError(f"--log-every must be a number of steps (100) or seconds (30s), "
                        f"greater than 0 (got {text!r})")
    return unit, number


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0) + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class WorkBar:
    """Renders `WorkProgress` events as a transient bar on a terminal (eval, inspect-labels);
    nothing elsewhere, so that pipes and `--json` output see nothing extra."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = None
        self.task = None

    def __call__(self, event) -> None:
        if not isinstance(event, WorkProgress) or not self.console.is_terminal:
            return
        if self.bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(event.task, total=event.total)
        self.bar.update(self.task, completed=event.done, description=event.task)
        if event.done >= event.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = self.task = None

    def __enter__(self) -> "WorkBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # however the work ends, the terminal is left clean


def print_table(console: Console, table) -> None:
    """Print a rich table at the width of its content. On a terminal narrower than that the
    terminal's width wins (cells fold); in a pipe or log file the table is printed whole, where
    rich would otherwise squeeze it into 80 columns and break headers and paths mid-word."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update(width=100_000), table).maximum
    # console.print caps any width at the console's own: a second console on the same file
    Console(file=console.file, width=max(natural, 1), no_color=console.no_color,
            highlight=False).print(table)


def log_record(row: dict, epochs: int) -> str:
    """An epoch as one log line that fits 80 columns: loss, test top-1 and its shot groups,
    seconds (the whole row is in metrics.jsonl; lr and img/s are on the progress lines)."""
    def pct(key: str) -> str:
        return "-" if row.get(key) is None else f"{100 * row[key]:.1f}"

    text = f"epoch {row['epoch']}/{epochs} loss {row['loss']:.3f}"
    if row.get("test_top1") is not None:
        text += (f" test {100 * row['test_top1']:.2f}% (many {pct('test_many')} / med "
                 f"{pct('test_medium')} / few {pct('test_few')})")
    else:
        text += f" train {pct('train_acc')}%"
    return text + f" {row['seconds']:.0f}s"


class TrainView:
    """Renders training events: on a terminal a per-step bar (loss, throughput, elapsed, ETA)
    and a line per epoch; elsewhere a line every `every` steps or seconds and one per epoch, none
    wider than the console. Owns SIGINT/SIGTERM/SIGHUP while epochs run: they ask the run to stop at
    the next optimizer step, which checkpoints, so `--resume` continues exactly; a second signal
    interrupts at once (the last checkpoint stays the resume point). A signal the process was
    started ignoring (SIGHUP under nohup) stays ignored."""

    SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}

    def __init__(self, console: Console, stop: StopFlag, every: tuple[str, float] = ("seconds", 30)):
        self.console, self.stop = console, stop
        self.unit, self.every = every
        self.progress = None
        self.task = None
        self.previous: dict = {}
        self.started = self.last_time = 0.0
        self.start_step = self.last_step = 0
        self.total_epochs = 0

    def __call__(self, event) -> None:
        if isinstance(event, Message):
            if not self.console.is_terminal:  # a log: wrapped between words, never inside a path
                self._line(f"{event.kind}: {event.text}" if event.kind else event.text)
                return
            text = escape(event.text)
            self.console.print(f"[yellow]{escape(event.kind)}:[/] {text}" if event.kind else text,
                               highlight=False)
        elif isinstance(event, EpochStarted):
            self._epoch_started(event)
        elif isinstance(event, StepDone):
            self._step_done(event)
        elif isinstance(event, EpochDone):
            if self.progress is not None and self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self._line(event.summary if self.console.is_terminal else log_record(
                event.row, self.total_epochs))

    def take_signals(self) -> None:
        """From now on SIGINT/SIGTERM/SIGHUP ask for a stop instead of killing the process (called
        before the run is set up, so a scheduler's SIGTERM during setup is not fatal either)."""
        if not self.previous:
            self.previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS
                             if not ignored(sig)}

    def _epoch_started(self, event: EpochStarted) -> None:
        self.take_signals()
        self.total_epochs = event.epochs
        self.started = self.last_time = time.monotonic()
        self.start_step = self.last_step = event.start_step
        if not self.console.is_terminal:
            return
        if self.progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
        self.task = self.progress.add_task(f"epoch {event.epoch + 1}/{event.epochs}",
                                           total=event.steps, completed=event.start_step,
                                           stats="")

    def _step_done(self, event: StepDone) -> None:
        stats = f"loss {event.loss:.3f} lr {event.lr:.4f} {event.samples_per_s:.0f} img/s"
        if self.progress is not None:
            if self.task is not None:
                self.progress.update(self.task, completed=event.step + 1, stats=stats)
            return
        now, done = time.monotonic(), event.step + 1
        due = (done - self.last_step >= self.every if self.unit == "steps"
               else now - self.last_time >= self.every)
        if not due or done == event.steps:  # the epoch's own line follows at once
            return
        self.last_time, self.last_step = now, done
        eta = (now - self.started) / max(done - self.start_step, 1) * (event.steps - done)
        self._line(f"epoch {event.epoch + 1}/{event.epochs} step {done}/{event.steps}  {stats}  "
                   f"eta {_clock(eta)}")

    def _line(self, text: str) -> None:
        """One record; where it is wider than the console, continued on indented lines (a word
        longer than the width, a path, stays whole on its own line)."""
        if self.console.is_terminal:
            self.console.print(escape(text), highlight=False)
            return
        width = max(self.console.width, 20)
        for line in textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False,
                                  break_long_words=False):
            self.console.print(escape(line), highlight=False, soft_wrap=True)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop.requested:  # a second signal: the user will not wait for the step to end
            self.close()
            raise KeyboardInterrupt
        self.stop.request(self.SIGNALS.get(signal.Signals(signum), 130))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

"""A progress bar on stderr for work that can take more than a few seconds (eval, inspect-labels).

Why stderr: stdout may be `--json` for a script. Shown only on a terminal, and transient, so logs
and pipes see nothing extra.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console

T = TypeVar("T")


def tracked(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield `items`, advancing a bar of `total` steps while doing so (on a terminal)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

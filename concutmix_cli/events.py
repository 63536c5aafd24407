"""What a training run tells its caller, as plain data: the library emits events, the caller
renders them (the CLI: rich progress and lines; a notebook: whatever it likes) or ignores them.

Also the one way in: `StopFlag`, set by whoever owns the signals (the CLI installs SIGINT/SIGTERM
handlers that set it), read by the training loop at safe points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """A line for the user; `kind` ('note', 'skipping batch', 'skipping checkpoint') or None."""

    text: str
    kind: str | None = None


@dataclass(frozen=True)
class EpochStarted:
    epoch: int
    """0-based."""
    epochs: int
    steps: int
    start_step: int


@dataclass(frozen=True)
class StepDone:
    """Sent every few steps and at the last one of an epoch (rank 0 only)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    """Mean loss of the epoch so far."""
    lr: float
    samples_per_s: float


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    row: dict[str, Any]
    """The metrics row written to metrics.jsonl."""
    summary: str
    """The row as one line."""


@dataclass(frozen=True)
class WorkProgress:
    """How far a long piece of work other than training is (evaluating, drawing samples): sent
    with done = 0 first, then after each item; done == total at the end."""

    task: str
    done: int
    total: int


Event = Union[Message, EpochStarted, StepDone, EpochDone, WorkProgress]
Callback = Callable[[Event], None]


class StopFlag:
    """A request to stop at the next safe point (after an optimizer step, with a checkpoint)."""

    def __init__(self) -> None:
        self.exit_code: int | None = None

    def request(self, exit_code: int = 130) -> None:
        self.exit_code = exit_code

    @property
    def requested(self) -> bool:
        return self.exit_code is not None


def emitter(callbacks: Callback | Iterable[Callback] | None) -> Callback:
    """One callable that sends each event to every callback (None: to nobody)."""
    if callbacks is None:
        return lambda event: None
    if callable(callbacks):
        return callbacks
    listeners = list(callbacks)

    def emit(event: Event) -> None:
        for listener in listeners:
            listener(event)

    return emit


def counted(items: Iterable[T], total: int, task: str, emit: Callback) -> Iterator[T]:
    """Yield `items`, reporting `WorkProgress(task, done, total)` to `emit` as they are used."""
    emit(WorkProgress(task, 0, total))
    for done, item in enumerate(items, 1):
        yield item
        emit(WorkProgress(task, done, total))

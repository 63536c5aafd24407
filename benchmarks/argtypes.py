"""The benchmark scripts' argument checks and their one-line refusal, in one place.

The scripts run unattended in a GPU window, where a traceback costs device minutes to read: a
count of 0, a malformed size or a missing data folder is answered with one `error:` line and exit
2 before anything is made or measured. The standard library only (gpu_window.py loads this
without torch).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn


def refuse(message: str) -> NoReturn:
    """One line on stderr, exit 2: the scripts' answer to bad input. A message that spans lines
    (a path or a wrapped library error in it) is joined into one."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse whose refusal is one `error:` line and exit 2 (not its usage block)."""

    def error(self, message: str) -> NoReturn:
        refuse(message)


def positive(kind: type, allow_zero: bool = False) -> Callable[[str], float | int]:
    """An argparse type: a finite number of `kind` above 0 (or 0 and above)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
        if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if allow_zero else 'more than 0'} (got {text})")
        return value
    return parse


def between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, both included."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high} (got {value})")
        return value
    return parse


def counts(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers, 0 or more each ("4,8,12")."""
    parse = positive(int, allow_zero=True)
    values = [parse(part.strip()) for part in text.split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"lists a number twice (got {text})")
    return values


def size(text: str) -> tuple[int, int]:
    """An argparse type: WIDTHxHEIGHT in pixels, each above 0 ("500x375")."""
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT, such as 500x375 (got {text!r})")
    parse = positive(int)
    return parse(parts[0].strip()), parse(parts[1].strip())


def run(main: Callable[[], object]) -> None:
    """Run a script's `main`, answering the toolkit's own refusals (a UserError: a data folder that
    is not one, a setting out of range) with one line and exit 2; any other failure keeps its
    traceback, which is what a defect needs."""
    from concutmix_cli.errors import UserError

    try:
        main()
    except UserError as err:
        refuse(str(err))

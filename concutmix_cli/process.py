"""How a command's process meets the outside world: termination signals and the encoding of its
output streams. The command line (cli.py) sets both up around every command; the library itself
installs nothing (training's graceful stop is progress.TrainView's, asked for by `train`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

TERMINATION = (signal.SIGTERM, signal.SIGHUP)


class Signalled(BaseException):
    """SIGTERM or SIGHUP outside training (which takes them as a graceful stop): raised where
    the program is, like KeyboardInterrupt, so that `finally` blocks remove what a command was
    staging (prepare's temporary folder, a temporary file) before the process ends with
    128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_signalled(signum, _frame) -> None:
    raise Signalled(signum)


def ignored(sig: int) -> bool:
    """True where whoever started the process asked it to ignore `sig`: SIGHUP under nohup, SIGINT
    in a shell script's background job. A command never takes such a signal over (training would
    otherwise stop when the terminal of a `nohup concutmix train` closes)."""
    return signal.getsignal(sig) is signal.SIG_IGN


@contextlib.contextmanager
def termination_signals() -> Iterator[None]:
    """While inside: SIGTERM / SIGHUP raise `Signalled` where they would have killed the process
    (not where they are ignored, as under nohup, or already taken); the previous handlers come
    back at the end."""
    previous = {}
    for sig in TERMINATION:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _raise_signalled)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def safe_streams() -> None:
    """Any terminal encoding (LC_ALL=C with PYTHONUTF8=0, latin-1, PYTHONIOENCODING=ascii): a
    character it cannot show is written escaped (`caf\\xe9`) instead of ending the command with
    UnicodeEncodeError (class names, file names). Files are always written in UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (captured output)
            pass

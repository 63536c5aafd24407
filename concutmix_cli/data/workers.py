"""DataLoader worker failures: end the run with one line and no process left behind.

Why this module exists: when a worker raises (an undecodable image, an I/O error, a bug), torch
re-raises in the main process with a multi-line "Caught X in DataLoader worker" message and
leaves the workers waiting for work. Our workers ignore SIGTERM (the main process finishes the
step and checkpoints on a stop signal, see `loader._ignore_stop_signals`), so Python's exit
handler, which terminates daemonic children with SIGTERM and then joins them, waited forever.

`guarded(loader)` iterates a DataLoader and, on any error or early stop, shuts its workers down
(SIGKILL for one that does not leave) and turns a worker's error into a one-line error of the
right kind: `UserError` (exit 2) for bad input, I/O errors, a dead or stuck worker; the original
exception type (exit 1, "internal error") for a bug.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from concutmix_cli.errors import UserError

LOADER_TIMEOUT_S = 600.0
"""A worker that delivers no batch for this long is taken as stuck (a hung network filesystem,
a deadlock) and the run ends instead of waiting forever."""

_USER_SIDE = ("UserError", "OSError", "IOError", "FileNotFoundError", "PermissionError",
              "IsADirectoryError", "NotADirectoryError", "UnidentifiedImageError",
              "DecompressionBombError", "TimeoutError")


def original_message(text: str) -> tuple[str | None, str]:
    """(exception type name, its one-line message) of a torch "Caught X in DataLoader worker
    process N.\\nOriginal Traceback ..." text; (None, first line) for any other text."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None, ""
    if not (lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]):
        return None, lines[0].strip()
    last = lines[-1].strip()  # "package.module.TypeName: message"
    head, sep, message = last.partition(": ")
    name = head.rsplit(".", 1)[-1] if sep and " " not in head else None
    return name, (message if name else last).strip()


def one_line_error(err: BaseException) -> BaseException:
    """The error to raise in the main process for `err` (raised while iterating a DataLoader)."""
    text = str(err)
    name, message = original_message(text)
    if name is not None:  # re-raised from a worker
        if name in _USER_SIDE or isinstance(err, (UserError, OSError)):
            return UserError(message if name == "UserError" else f"data loader worker: {message}")
        try:
            return type(err)(f"in a data loader worker: {name}: {message}")
        except Exception:  # noqa: BLE001 - a type that needs other arguments
            return RuntimeError(f"in a data loader worker: {name}: {message}")
    if isinstance(err, RuntimeError) and "DataLoader" in text:
        # torch's own: "DataLoader worker (pid X) is killed by signal", "... timed out after N s"
        return UserError(f"{message}; a worker died or hung (out of memory? a stalled "
                         "filesystem?); try --set data.num_workers=0 or fewer workers")
    return err


def shut_down(iterator) -> None:
    """Stop a DataLoader iterator's workers now; kill any that does not exit."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - best effort: the kill below still runs
            pass
    for worker in getattr(iterator, "_workers", []) or []:
        if worker.is_alive():
            worker.kill()  # SIGKILL: workers ignore SIGTERM
            worker.join(timeout=5)


def guarded(loader: Iterable) -> Iterator:
    """Iterate `loader` (a DataLoader); on an error or an early stop shut its workers down.

    A normal end of the iteration leaves persistent workers running for the next epoch."""
    iterator = iter(loader)
    finished = False
    try:
        for batch in iterator:
            yield batch
        finished = True
    except Exception as err:  # noqa: BLE001 - converted below, nothing swallowed
        converted = one_line_error(err)
        if converted is err:
            raise
        raise converted from None
    finally:
        if not finished:  # an error, GeneratorExit (graceful stop), KeyboardInterrupt
            shut_down(iterator)
            _forget(loader)


def close(loader) -> None:
    """Shut down the persistent workers of a DataLoader (end of training, any way it ends)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        shut_down(iterator)
        _forget(loader)


def _forget(loader) -> None:
    """A persistent-workers DataLoader keeps its iterator; drop the one that was shut down."""
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator = None

"""One writer per run folder: an exclusive lock (locking.py) on RUN/.concutmix.lock while
`train` runs (rank 0 under torchrun). A second writer is refused naming the holder; the lock of
a killed run is taken over. Readers use `being_written` to tell a run in training (its files
may be between two atomic writes) from a damaged one.
"""

from __future__ import annotations

from pathlib import Path

from concutmix_cli.locking import ExclusiveLock, close_in_child, held_by_a_live_process

__all__ = ["LOCK_NAME", "RunLock", "being_written", "close_in_child"]

LOCK_NAME = ".concutmix.lock"


class RunLock(ExclusiveLock):
    """The lock of one run folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        super().__init__(self.folder / LOCK_NAME, str(self.folder),
                         rule="a run folder takes one writer at a time")


def being_written(folder: Path) -> bool:
    """Whether a live process of this host holds the run folder's lock (a training run)."""
    return held_by_a_live_process(Path(folder) / LOCK_NAME)

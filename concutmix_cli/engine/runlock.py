"""One writer per run folder: an exclusive `flock` on RUN/.concutmix.lock while `train` runs.

Why flock: the kernel releases it when the holder dies, however it dies (SIGKILL, OOM, power
off of a local disk), so a killed run never leaves a lock stuck; a lock file left behind by a
dead process is simply taken over (and said so). The holder writes its pid and host into the
file, so a second writer is told who holds the run. The file is removed when the lock is
released; `acquire` checks that the file it locked is still the one at the path (the previous
holder may have just removed it), the usual guard against two holders of two inodes.

DataLoader workers are forked with a copy of the descriptor; `close_in_child` closes it there
so that a worker that outlives a killed main process does not keep the run locked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import file_mode

LOCK_NAME = ".concutmix.lock"
_HELD: set[int] = set()
"""Descriptors of the locks this process holds (closed in forked workers)."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        body = json.loads(os.read(fd, 4096) or b"{}")
        return body if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    return f"process {holder['pid']} on {holder.get('host', '?')}"


class RunLock:
    """`with RunLock(run_path):` or `acquire()` / `release()`; releasing twice is harmless."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise UserError naming the holder; returns a note when the lock of a
        process that died was taken over, or when the filesystem cannot lock."""
        if self.fd is not None:
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(
                        f"{self.folder} is being written by {_describe(holder)} (lock "
                        f"{self.path}); a run folder takes one writer at a time: wait for it to "
                        "finish, or stop that process first"
                    ) from None
                return (f"cannot lock {self.path} ({err.strerror}: a filesystem without locks); "
                        "make sure no other process trains this run")
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: retry
                os.close(fd)
                continue
            stale = _holder(fd)
            record = {"pid": os.getpid(), "host": socket.gethostname()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self.fd = fd
            _HELD.add(fd)
            if stale.get("pid"):
                return (f"took over the lock of {_describe(stale)}, which is no longer running "
                        "(it was killed or crashed)")
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def close_in_child() -> None:
    """In a forked child (a DataLoader worker): drop the inherited lock descriptors. The parent's
    lock is unaffected (it keeps its own descriptor)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()

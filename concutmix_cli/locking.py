"""One writer at a time: an exclusive `flock` on a lock file, held while a command writes a run
folder (`train`, engine/runlock.py) or a dataset folder (`prepare --out`, data/staging.py).

Why flock: the kernel releases it when the holder dies, however it dies (SIGKILL, OOM, power
off of a local disk), so a killed process never leaves a lock stuck; a lock file left behind by
a dead process is simply taken over (and said so). The holder writes its pid and host into the
file, so a second writer is told who holds it. The file is removed when the lock is released;
`acquire` checks that the file it locked is still the one at the path (the previous holder may
have just removed it), the usual guard against two holders of two inodes.

DataLoader workers are forked with a copy of the descriptor; `close_in_child` closes it there
so that a worker that outlives a killed main process does not keep the lock.
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

_HELD: set[int] = set()
"""Descriptors of the locks this process holds (closed in forked workers)."""


def read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        body = json.loads(os.read(fd, 4096) or b"{}")
        return body if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    return f"process {holder['pid']} on {holder.get('host', '?')}"


def held_by_a_live_process(path: Path) -> bool:
    """Whether the lock file at `path` names a process of this host that is still running (a
    reader's hint that the folder is being written now; never takes the lock itself)."""
    try:
        holder = json.loads(Path(path).read_text() or "{}")
        pid = int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExclusiveLock:
    """`with ExclusiveLock(path, what):` or `acquire()` / `release()`; releasing twice is
    harmless. `what` names the thing being written for the refusal ("RUN", "--out DATA")."""

    def __init__(self, path: Path, what: str, rule: str = "one writer at a time"):
        self.path = Path(path)
        self.what = what
        self.rule = rule
        self.fd: int | None = None

    def refusal(self, holder: dict) -> UserError:
        return UserError(f"{self.what} is being written by {describe(holder)} (lock {self.path}); "
                         f"{self.rule}: wait for it to finish, or stop that process first")

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
                holder = read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self.refusal(holder) from None
                return (f"cannot lock {self.path} ({err.strerror}: a filesystem without locks); "
                        "make sure no other process writes there")
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: retry
                os.close(fd)
                continue
            stale = read_holder(fd)
            record = {"pid": os.getpid(), "host": socket.gethostname()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self.fd = fd
            _HELD.add(fd)
            if stale.get("pid"):
                return (f"took over the lock of {describe(stale)}, which is no longer running "
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

    def __enter__(self) -> "ExclusiveLock":
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

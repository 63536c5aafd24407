"""File helpers shared by every writer and reader: sha256 digests and atomic writes
(temporary name in the same folder, flush, fsync, rename), so no file is ever half written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from concutmix_cli.errors import UserError

TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, flush, fsync, then rename over `path`."""
    path = Path(path)
    _refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; others get what the umask allows
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    _fsync_dir(path.parent)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str | None:
    """What a file of `st_mode` is when it is not a regular file ("a FIFO", "a folder", ...);
    None for a regular file. One wording for every reader and writer that refuses such files."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def _refuse_special(path: Path) -> None:
    """The rename would replace a symlink, device, FIFO or socket at `path` with a regular file
    (as root, `/dev/null` itself): refuse. Outputs a user names are resolved and checked before
    (outputs.check_outputs); this is the last line of defence for every writer."""
    try:
        kind = file_kind(os.lstat(path).st_mode)
    except OSError:
        return
    if kind is not None:
        raise UserError(f"{path} is {kind}, not a regular file; refusing to replace it: write "
                        "to a regular file")


def _naming(err: OSError, path: Path) -> OSError:
    """The same error, naming the file being written (not its temporary name) for the message."""
    return OSError(err.errno, err.strerror or str(err), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory for any file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0644 for umask 022, 0664 for
    002): what we write is as shareable as the user's other files, not private to them."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode `mkdir` gives a new folder under the current umask (mkdtemp makes 0700)."""
    return 0o777 & ~_umask()


def _first_non_finite(value: Any, where: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, (list, tuple)) else ())
    for key, item in items:
        found = _first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def json_text(obj: Any, **kwargs: Any) -> str:
    """json.dumps that never writes NaN or Infinity (not JSON; other readers reject them).

    A non-finite number is a bug upstream (inputs are checked where they enter): the error names
    the key instead of writing a file that other tools cannot read."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        where = _first_non_finite(obj)
        if where is None:
            raise
        raise ValueError(f"refusing to write a non-finite number (NaN or Infinity) at '{where}' "
                         "as JSON") from None


def _refuse_non_finite(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} is out of range")
    return value


def strict_json_loads(text: str) -> Any:
    """json.loads of JSON proper: NaN, Infinity and numbers beyond float (1e999) are refused
    (ValueError), as our writers never write them (`json_text`) and other tools reject them."""
    return json.loads(text, parse_constant=_refuse_non_finite, parse_float=_finite_float)


def read_json_lines(path: Path | str) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a JSON-lines file (metrics.jsonl) up to the first line that is not a JSON
    object, and where the reading stopped (None: every line was read), as words for a note:
    "line 3 is not JSON (cut short, as by a crash?); read the 2 rows before it".

    One reader for every reader of metrics.jsonl (train, report, plot, the reproduction table),
    so that they agree: a line cut by a kill costs that row (train redoes its epoch), never the
    rows before it. Blank lines are skipped. NaN and Infinity are not JSON (our writers never
    write them, other tools reject them) and stop the reading like any other bad line. An
    unreadable file is the caller's OSError; undecodable bytes make their line unreadable."""
    lines = Path(path).read_bytes().decode("utf-8", errors="replace").split("\n")
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    rows: list[dict[str, Any]] = []
    for position, (number, line) in enumerate(numbered):
        try:
            row = strict_json_loads(line)
        except json.JSONDecodeError:
            last = position == len(numbered) - 1
            why = "not JSON" + (" (cut short, as by a crash?)" if last else "")
        except ValueError as err:  # NaN, Infinity, 1e999
            why = f"not JSON ({err})"
        except RecursionError:
            why = "not JSON (nested too deeply)"
        else:
            if isinstance(row, dict):
                rows.append(row)
                continue
            kind = "null" if row is None else {list: "a list", str: "a string",
                                                bool: "a boolean"}.get(type(row), "a number")
            why = f"not a JSON object ({kind})"
        after = len(numbered) - position - 1
        return rows, (f"line {number} is {why}; "
                      + (f"read the {len(rows)} row(s) before it" if rows else "no row before it")
                      + (f", not the {after} line(s) after it" if after else ""))
    return rows, None

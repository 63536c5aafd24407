"""A user's image files: finding them under folders and decoding them, in one place.

Everything that reads a user's images goes through here (`prepare folder|csv`, the split lists
at training time, `predict`), so every route makes the same promises:

- Only regular files are opened: a FIFO named like an image would block `open()` forever, and a
  device or socket is no image. Such a file is an unreadable image ("not a regular file (a
  FIFO)"), never opened.
- Folders are searched with links followed, but each folder is entered once per search (by its
  (st_dev, st_ino)), so a link back up the tree cannot multiply the images; every file carries
  its identity, so callers can tell a link or a hard link to a file they already have.
- Decoding is complete (a truncated file fails here, not in training) and ends in 8-bit RGB.
  An image above Pillow's pixel limit (Image.MAX_IMAGE_PIXELS, about 89 million) is refused
  before its pixels are allocated, where Pillow itself would only warn up to twice the limit.
  Pillow's `convert("RGB")` clips 16-bit greyscale (modes I;16*, I) to white; these are scaled
  (value * 255 / 65535, rounded) instead, and what has no faithful 8-bit mapping (32-bit float,
  integers outside 0..65535) is refused. (16-bit RGB and grey+alpha PNGs need nothing: Pillow
  13 already reads them as 8-bit RGB / RGBA, keeping the high byte.)
- File names that are not valid UTF-8 (undecodable bytes, kept by Python as surrogates) are shown
  with their bytes escaped (`shown_path`), so a message, a manifest or a prediction row that
  names them can always be written.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import file_kind

_NO_BLOCK = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
"""Opening a FIFO with O_NONBLOCK returns at once (then fstat refuses it) instead of waiting for
a writer; on a regular file the flag changes nothing."""
_UINT16_MAX = 65535


class UnreadableImage(ValueError):
    """A file that is not an image this toolkit can decode; the message is the reason, printable
    (no undecodable file-name bytes)."""


def is_utf8(text: str) -> bool:
    """False for a name Python decoded with surrogates (bytes that are not UTF-8)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown_path(path: str | os.PathLike) -> str:
    """`path` as text that can be printed and written as UTF-8: undecodable bytes escaped
    (b"caf\\xe9.png" -> 'caf\\\\xe9.png'), everything else as it is."""
    text = os.fspath(path)
    return text if is_utf8(text) else os.fsencode(text).decode("utf-8", "backslashreplace")


def _not_regular(mode: int) -> str:
    return f"not a regular file ({file_kind(mode)})"


def file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names, links followed; None when it cannot be reached
    (missing, a broken link or a link loop: the decoder reports those)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def open_regular(path: str | os.PathLike):
    """`path` opened for binary reading, if it is a regular file (links followed). Raises
    FileNotFoundError when it is missing, UnreadableImage for anything else that is not a
    regular file, without opening it."""
    if "\0" in os.fspath(path):  # os.stat would raise ValueError
        raise UnreadableImage("the path holds a NUL character, which no file name can")
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage(_not_regular(st.st_mode))
    fd = os.open(path, os.O_RDONLY | _NO_BLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode  # replaced between stat and open: checked again
        if not stat.S_ISREG(mode):
            raise UnreadableImage(_not_regular(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a loaded image: 16-bit greyscale scaled, not clipped."""
    if image.mode == "F":
        raise UnreadableImage("32-bit floating-point pixels (mode F) have no faithful 8-bit "
                              "mapping; save the image with 8 or 16 bits per channel")
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image)
        if values.size and (int(values.min()) < 0 or int(values.max()) > _UINT16_MAX):
            raise UnreadableImage(
                f"32-bit integer pixels outside 0..{_UINT16_MAX} (found {int(values.min())}.."
                f"{int(values.max())}) have no faithful 8-bit mapping; save the image with 8 or "
                "16 bits per channel")
        # round(v * 255 / 65535) = round(v / 257) = (v + 128) // 257 for integers v >= 0
        eight = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(eight).convert("RGB")
    return image.convert("RGB")


def decode_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at `path`, fully decoded, as 8-bit RGB (first frame of an animation).

    Raises FileNotFoundError when it is missing (callers say where to look) and UnreadableImage,
    with a printable reason, for everything else that is not a decodable image."""
    with open_regular(path) as file, warnings.catch_warnings():
        # above Image.MAX_IMAGE_PIXELS Pillow only warns (on stderr, after the one error line)
        # and decodes anyway, up to twice that many pixels: refused here, like the larger ones
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as image:
                image.load()
                return to_rgb8(image)
        except UnreadableImage:
            raise
        except Image.UnidentifiedImageError:
            raise UnreadableImage("cannot identify image file (not an image format Pillow "
                                  "reads)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UnreadableImage(f"too large to decode safely ({' '.join(str(err).split())})"
                                  ) from None
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - Pillow's plugins raise many types on bad data
            reason = " ".join(str(err).split()) or type(err).__name__
            raise UnreadableImage(shown_path(reason)) from None


def reason_of(err: BaseException) -> str:
    """One printable line saying why `decode_rgb` failed (an OSError: its strerror, without the
    path, which the caller names anyway)."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return shown_path(" ".join(text.split()) or type(err).__name__)


@dataclass(frozen=True)
class Found:
    """A file found under a folder: its path and identity (`file_identity`)."""

    path: Path
    identity: tuple[int, int] | None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def walk_files(folder: Path) -> list[Found]:
    """Every file under `folder`, recursively, links followed, hidden names (".*") left out, in
    os.walk's order (a folder's files sorted by name, then its sub-folders, sorted).

    Each folder is entered once: a link to a folder already entered (a loop such as `loop -> .`
    or `-> ..`) is not entered again. Anything that is not a folder counts as a file (FIFOs and
    broken links too: the decoder reports them). A folder that cannot be listed is an error:
    leaving its images out without a word would change the data."""
    found: list[Found] = []
    entered: set[tuple[int, int]] = set()
    stack = [Path(folder)]
    while stack:
        directory = stack.pop()
        identity = file_identity(directory)
        if identity is None or identity in entered:
            continue
        entered.add(identity)
        try:
            with os.scandir(directory) as listing:
                entries = sorted((e for e in listing if not _is_hidden(e.name)), key=lambda e: e.name)
        except OSError as err:
            raise UserError(f"{shown_path(directory)}: cannot list the folder "
                            f"({err.strerror or err}); fix its permissions or move it out") from None
        folders = []
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # links followed
            except OSError:
                is_folder = False
            if is_folder:
                folders.append(Path(entry.path))
            else:
                found.append(Found(Path(entry.path), file_identity(entry.path)))
        stack.extend(reversed(folders))
    return found

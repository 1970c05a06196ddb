"""Opening the files a user hands in: regular files only, bounded in size, errors in one sentence.

A FIFO, a socket or a device given where a file is expected would block ``open()`` or
``read()`` forever (a FIFO with no writer) or stream without end (``/dev/zero``), so every
input is opened without blocking and checked to be a regular file *on the opened handle*
(``fstat``), which leaves no window between the check and the read.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["MAX_JSON_BYTES", "open_regular", "read_bytes", "read_json", "require_regular"]

MAX_JSON_BYTES = 64 << 20  # a manifest or report of a model with a million layers is far smaller


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_regular(path: Path, what: str, mode: int) -> ValueError:
    return ValueError(f"{what} {path} is {_kind(mode)}, not a regular file; pass a file")


def require_regular(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path`` if it names an existing regular file (links followed); else one ``ValueError``."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, what, mode)
    return path


@contextmanager
def open_regular(path: str | os.PathLike, what: str) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, refusing (without blocking) anything but a regular file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} cannot be read: it does not exist") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, what, mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_bytes(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refused in one sentence when it holds more than ``limit``."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ValueError(f"{what} {path} is {size:,} bytes, larger than {limit:,} bytes: more than a {what} can be")
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise ValueError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    if len(data) > limit:  # grew while being read
        raise ValueError(f"{what} {path} is larger than {limit:,} bytes: more than a {what} can be")
    return data


def read_json(path: str | os.PathLike, what: str, limit: int = MAX_JSON_BYTES) -> object:
    """The JSON value in ``path``, refusing special, huge, empty, non-UTF-8 and too deeply nested files in one sentence.

    A UTF-8 byte-order mark (which spreadsheets and Windows editors write) is accepted.
    """
    data = read_bytes(path, what, limit)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is corrupt: a {what} is UTF-8 JSON text") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty; write it again with netcompress")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is corrupt: not valid JSON ({error})") from None
    except ValueError as error:  # NaN/Infinity, or an integer too long to parse
        raise ValueError(f"{what} {path} is corrupt: {error}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is corrupt: its JSON is nested too deeply to be a {what}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"it holds {name}, which JSON does not allow")

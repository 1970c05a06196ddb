"""Writing files so that a reader sees the old file or the new one, never half of one.

Every file is written under a hidden temporary name in its target's folder and renamed
into place (``os.replace`` is atomic on one file system). Nothing here deletes a file it
did not create.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "made_directories", "staged_file", "umask_mode"]


def umask_mode(full: int) -> int:
    """``full`` (0o666 for files, 0o777 for directories) under the process umask, as open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return full & ~mask


@contextmanager
def made_directories(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and missing parents); if the block fails, remove those that were created and are empty."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break
        raise


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds, else remove it.

    The folder of ``path`` must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)``, then rename the result onto ``path`` (creating its folder)."""
    path = Path(path)
    with made_directories(path.parent), staged_file(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))

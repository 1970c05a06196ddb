"""Writing files so that a reader sees the old file or the new one, never half of one.

Every file is written under a hidden temporary name in its target's folder and renamed
into place (``os.replace`` is atomic on one file system). Nothing here deletes a file it
did not create.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "locked", "made_directories", "remove_stale", "staged_file",
           "umask_mode"]

UNLOCKED_STALE_SECONDS = 3600  # without file locks, a temporary file this old belongs to no running write


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
    """Call ``write(temporary_path)``, then rename the result onto ``path`` (creating its folder).

    Under a lock on the folder, the temporary files an interrupted write of ``path`` left are removed first.
    """
    path = Path(path)
    with made_directories(path.parent), locked(path.parent) as lock_held:
        remove_stale(path.parent, [path.name], lock_held=lock_held)
        with staged_file(path) as tmp:
            write(tmp)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


@contextmanager
def locked(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``folder`` (``flock`` on the directory itself, no lock file) while active.

    Yields whether a lock is held: where the platform has no ``flock`` the block runs unlocked.
    Another netcompress write into the same folder waits until this one ends.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder one may write but not read: no lock, and nothing is cleaned up
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def temporary_of(entry: Path, names: Iterable[str]) -> bool:
    """Whether ``entry`` is a temporary file :func:`staged_file` makes for one of ``names`` (``.name.XXXXXXXX.tmp``)."""
    match = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp", entry.name)
    return match is not None and match.group(1) in set(names)


def remove_stale(folder: Path, names: Iterable[str], extra: Iterable[Path] = (), *, lock_held: bool) -> None:
    """Delete the temporary files that interrupted writes of ``names`` left in ``folder``, and the paths ``extra``.

    Only called under :func:`locked`: then no other write is under way and every such file is
    stale. Without a lock only files untouched for :data:`UNLOCKED_STALE_SECONDS` are removed.
    Only regular files of netcompress's own naming are ever deleted.
    """
    names = tuple(names)
    now = time.time()
    for entry in [*folder.iterdir(), *extra]:
        try:
            if not (entry.is_file() and not entry.is_symlink()) or not (temporary_of(entry, names) or entry in extra):
                continue
            if lock_held or now - entry.stat().st_mtime > UNLOCKED_STALE_SECONDS:
                entry.unlink()
        except OSError:
            continue  # gone already, or not ours to remove: a later write tries again

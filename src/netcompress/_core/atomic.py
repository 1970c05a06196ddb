"""Writing files so that a reader sees the old file or the new one, never half of one.

Every file is written under a hidden temporary name in its target's folder and renamed
into place (``os.replace`` is atomic on one file system). Nothing here deletes a file it
did not create.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "locked", "made_directories", "remove_stale", "replacing", "sha256", "staged_file",
           "staged_name", "umask_mode", "vouched", "write_vouched"]

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


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`staged_file` for ``path`` in its folder (created if missing), under a lock on that folder.

    The temporary files an interrupted write of ``path`` left there are removed first. Do not
    nest two of these (or :func:`write_vouched`) on one folder: the second would wait for the first.
    """
    path = Path(path)
    with made_directories(path.parent), locked(path.parent) as lock_held:
        remove_stale(path.parent, [path.name], lock_held=lock_held)
        with staged_file(path) as tmp:
            yield tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)``, then rename the result onto ``path`` (see :func:`replacing`)."""
    with replacing(path) as tmp:
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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # NFS refuses flock on a read-only descriptor, Lustre without -o flock has none
            yield False
            return
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


# ---- a set of files switched by one rename: staged files, then the record that vouches for them -----------------

def sha256(file: Path) -> str:
    """The SHA-256 of ``file``'s bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def staged_name(name: str) -> str:
    """The hidden name under which :func:`write_vouched` keeps the new ``name`` until its record is in place."""
    return f".{name}.next"


def vouched(folder: Path, name: str, digest: object) -> Path | None:
    """The regular file holding ``name`` whose SHA-256 is ``digest``: in place, or staged by a write cut short."""
    for candidate in (folder / name, folder / staged_name(name)):
        if candidate.is_file() and not candidate.is_symlink() and digest == sha256(candidate):
            return candidate
    return None


def _remove_if(file: Path, digest: object) -> None:
    if isinstance(digest, str) and file.is_file() and not file.is_symlink() and sha256(file) == digest:
        file.unlink()


def _settle(folder: Path, names: tuple[str, ...], record: str, digests: dict, removes: dict, lock_held: bool) -> None:
    """Finish what a write cut short after its switch left, then remove what no record vouches for.

    Killed after the switch, the record vouches (by SHA-256) for staged files: they are renamed
    into place now, and the files it replaced are removed if their digests match. Staged files
    it does not vouch for, and temporary files of these names, are stale and removed.
    """
    for name in names:
        if name in digests and vouched(folder, name, digests[name]) == folder / staged_name(name):
            os.replace(folder / staged_name(name), folder / name)
    for name, digest in removes.items():
        if name in names and name not in digests:
            _remove_if(folder / name, digest)
    staged = [folder / staged_name(name) for name in names]  # what is still staged now, no record vouches for
    remove_stale(folder, [*names, record, *(staged_name(name) for name in names)], staged, lock_held=lock_held)


def write_vouched(folder: Path, payloads: dict[str, Callable[[Path], None]], record: str,
                  write_record: Callable[[Path, dict[str, str], dict[str, str]], None],
                  current: Callable[[], tuple[dict, dict] | None], names: Iterable[str]) -> None:
    """Write the files ``payloads`` names (``name → write(path)``) and the ``record`` file that vouches for them.

    Each payload is staged under :func:`staged_name` and its SHA-256 taken; then
    ``write_record(path, digests, removes)`` writes the record (naming ``digests``, and
    ``removes``: the files of ``names`` the previous record vouched for that this write leaves
    out), which is renamed into place: that rename is the one switch from the old set of files to
    the new. The staged files are renamed onto their names after it, and the left-out ones
    removed. Killed at any point, ``folder`` holds the old set or the new one (readers use
    :func:`vouched`); the next write finishes what is left. ``current()`` gives the present
    record's ``(digests, removes)``, or None where there is none. Runs under :func:`locked`.
    """
    names = tuple(names)
    with made_directories(folder), locked(folder) as lock_held:
        _settle(folder, names, record, *(current() or ({}, {})), lock_held)
        previous = (current() or ({}, {}))[0]
        digests = {}
        for name, write in payloads.items():
            with staged_file(folder / staged_name(name)) as tmp:
                write(tmp)
                digests[name] = sha256(tmp)
        removes = {name: digest for name, digest in previous.items() if name not in digests}
        with staged_file(folder / record) as tmp:
            write_record(tmp, digests, removes)
        for name in digests:
            os.replace(folder / staged_name(name), folder / name)
        for name, digest in removes.items():
            _remove_if(folder / name, digest)

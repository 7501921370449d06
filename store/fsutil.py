"""Crash-safe file helpers: write to a temporary name, fsync, rename, fsync the directory.

Modes are explicit, whatever the process umask: `atomic_write` gives the file exactly `mode`
(default 0600) and `ensure_dir` gives every directory it creates exactly `mode` (default 0700),
parents included. Everything under the data directory is private to the gateway's user
(DECISIONS.md, data directory layout); the CLI also sets umask 077 for writers outside store/.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file whole.
    The file gets exactly `mode` (not narrowed or widened by the umask)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crashed writer with this pid: never reuse its mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o777)
    try:
        os.fchmod(fd, mode & 0o777)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_private(path: Path, mode: int = FILE_MODE) -> None:
    """Create (or empty) `path` with exactly `mode`, so a writer that opens it by name afterwards
    (pyarrow truncates an existing file, keeping its mode) writes a private file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode & 0o777)
    try:
        os.fchmod(fd, mode & 0o777)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create `path` and any missing parents, each with exactly `mode`, fsyncing the parent of
    each new directory (so power loss cannot drop it); existing directories are left as they
    are."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by another process: theirs to set
        os.chmod(directory, mode)
        fsync_dir(directory.parent)
    return path


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Take an exclusive flock on `path` (made 0600 if absent) without waiting: yields True
    while held, False if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)

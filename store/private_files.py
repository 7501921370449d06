"""Files and directories only the gateway's user may read: 0600 and 0700 whatever the umask.

`os.open(..., 0o600)` and `mkdir(mode=0o700)` are masked by the process umask, and
`Path.mkdir(parents=True)` makes missing parents with the default mode; these helpers set the
mode explicitly (`fchmod`/`chmod`) on everything they create. The metadata writer (journal,
Parquet files, commit records, partition directories) writes through them.
"""

from __future__ import annotations

import os
from pathlib import Path

from store.fsutil import fsync_dir

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(path: Path) -> Path:
    """mkdir -p with mode 0700 for every directory it makes (whatever the umask), fsyncing each
    parent of a new directory (so power loss cannot drop it). Existing ones are left alone."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not new.is_dir():
                raise
            continue  # made meanwhile by another thread or process
        os.chmod(new, DIR_MODE)
        fsync_dir(new.parent)
    return path


def create_private(path: Path) -> None:
    """Create (or empty) `path` with mode 0600 whatever the umask, so a writer that opens it by
    name afterwards (pyarrow truncates an existing file, keeping its mode) writes a 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def private_atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600): a crash leaves the old or the new file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)

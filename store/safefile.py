"""Reading a file named by an operator (config, identity feed, identity or key file) safely.

`open()` on a FIFO blocks until a writer appears, and a character device or a socket never ends:
either hangs the command for good. `read_regular` opens with O_NONBLOCK (a FIFO then opens at
once), checks with fstat on the open descriptor (no race with a rename) that it is a regular
file, and reads at most `max_bytes`. Every problem is one `UnsafeFileError` line naming the path
and what it was expected to be.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from store import StoreError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class UnsafeFileError(StoreError):
    """The path is missing, unreadable, not a regular file, or too large."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path | str, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`; `what` names
    it in errors (e.g. "identity file")."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnsafeFileError(f"{name}: {what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
            check_regular(name, what)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UnsafeFileError(f"{name}: cannot read {what} ({reason})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{name}: {what} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise UnsafeFileError(f"{name}: {what} is larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # grew while we read
                raise UnsafeFileError(f"{name}: {what} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UnsafeFileError(f"{name}: cannot read {what} ({reason})") from None
    finally:
        os.close(fd)


def check_regular(path: Path | str, what: str) -> None:
    """Raise UnsafeFileError unless `path` exists and is a regular file (no open, no read)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise UnsafeFileError(f"{name}: {what} not found") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UnsafeFileError(f"{name}: cannot read {what} ({reason})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{name}: {what} is {_kind(st.st_mode)}, not a regular file")

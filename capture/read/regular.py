"""Open a file for reading only if it is a regular file.

A FIFO given as a capture file (or a socket, a device, a directory) would block a read forever
or never end: such paths are refused with a `CaptureError` naming the path and what it is.
The path is opened with O_NONBLOCK (opening a FIFO then cannot block) and the open descriptor
is checked with fstat, so what is read is what was checked, even if the path is swapped.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from capture import CaptureError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path) -> io.BufferedReader:
    """`path` opened for reading (binary, blocking reads) if it is a regular file; raises
    CaptureError naming the path otherwise."""
    try:
        st = os.stat(path)  # a socket cannot be opened at all: name it first
        if not stat.S_ISREG(st.st_mode):
            raise CaptureError(f"{path}: not a regular file ({_kind(st.st_mode)}); refused")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaptureError(f"{path}: not a regular file ({_kind(st.st_mode)}); refused")
        os.set_blocking(fd, True)
        return open(fd, "rb")  # owned by the caller
    except BaseException:
        os.close(fd)
        raise

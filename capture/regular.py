"""Open a file for reading only if it is a regular file.

A FIFO given as a capture file (or a socket, a device, a directory) would block a read forever
or never end: such paths are refused with a `CaptureError` naming the path and what it is.
The path is opened with O_NONBLOCK (opening a FIFO then cannot block) and the open descriptor
is checked with fstat, so what is read is what was checked, even if the path is swapped.

`ReadDigest` hashes a file's bytes as a reader reads them (SHA-256, which releases the GIL on
large buffers), so a capture is fingerprinted in the same pass that replays it.
"""

from __future__ import annotations

import hashlib
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


class ReadDigest:
    """SHA-256 of a file from its reads, given with their file offsets: reads must cover the
    file from offset 0 in order (overlaps are fine: a header read twice is hashed once). A gap
    (a record skipped by seeking) makes the digest unusable: `hexdigest` then returns None."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.upto = 0  # bytes hashed: the file's bytes [0, upto)
        self.gap = False

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        if self.gap or end <= self.upto:
            return
        if offset > self.upto:
            self.gap = True
            return
        self._h.update(data[self.upto - offset :] if offset < self.upto else data)
        self.upto = end

    def hexdigest(self, size: int) -> str | None:
        """The file's SHA-256 if the reads covered exactly its `size` bytes, else None."""
        return None if self.gap or self.upto != size else self._h.hexdigest()

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
import queue
import stat
import threading
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
    (a record skipped by seeking) makes the digest unusable: `hexdigest` then returns None.

    With `background`, hashing runs on its own thread, at most `depth` reads behind, so the
    reader hands its batches on without waiting for SHA-256 (the parts are the reader's own
    buffers, never written again once read). `feed` and `finish` are called from one thread
    at a time (the reader's)."""

    def __init__(self, *, background: bool = False, depth: int = 4) -> None:
        self._h = hashlib.sha256()
        self.upto = 0  # bytes fed: the file's bytes [0, upto)
        self.gap = False
        self._q: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._q = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._work, name="capture-sha256", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        assert self._q is not None
        while (part := self._q.get()) is not None:
            self._h.update(part)  # releases the GIL for large parts

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        if self.gap or end <= self.upto:
            return
        if offset > self.upto:
            self.gap = True
            return
        part = data[self.upto - offset :] if offset < self.upto else data
        self.upto = end
        if self._thread is not None and self._q is not None:
            self._q.put(part)  # waits while the hashing thread is `depth` parts behind
        else:
            self._h.update(part)

    def finish(self) -> None:
        """Wait for the hashing thread to hash what was fed, and end it (idempotent); later
        feeds are hashed on the caller's thread."""
        if self._thread is not None and self._q is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self, size: int) -> str | None:
        """The file's SHA-256 if the reads covered exactly its `size` bytes, else None."""
        self.finish()
        return None if self.gap or self.upto != size else self._h.hexdigest()

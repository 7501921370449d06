"""A capture file read in chunk buffers, for `capture.read.reader`.

Each chunk is a buffer of its own: the bytes left over from the chunk before (a record cut by
its end) followed by fresh file data. A buffer is never changed while anything refers to it
(batches, views and hash regions all hold a reference): the `chunk`-sized ones are kept in a
small pool and read into again only when their reference count says nothing else holds them.
A new 16 MiB buffer for every chunk was fresh memory each time (glibc maps a block that large
and unmaps it when freed), and the kernel cleared its pages as the file was read into it: 0.1
s more system time on the 2M-packet bench capture (docs/capture-io.md). With a consumer on
another thread (`capture.read.prefetch`) two buffers take turns (`BUFFERS`): when both are held
(a batch in the flow table, the next one queued), the reader waits for the consumer to take the
queued batch, which lets go of the one before, instead of touching a third 16 MiB (`wait_taken`;
memory touched for the first time was the dearest part of the reader on a virtual machine).
pcap chunks are read in `PIECE`s, each walked (`PcapRecords`) and handed to `tap` right after
it is read, while it is in the core's cache.

Given a `Mapper` (`capture.read.mapped`), a chunk is not read at all but mapped: the file range
from the first byte of the cut record on, read-only, with no copy out of the page cache and no
buffer of this process (the pool is then unused). A file that shrank under a mapping fails
with a `CaptureError` (`check`).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from capture import CaptureError
from capture.read.mapped import Mapper
from capture.read.records import PcapRecords

Buf = npt.NDArray[np.uint8]
Tap = Callable[[int, memoryview], None]
PIECE = 512 << 10  # pcap: read this much at a time and walk it while it is in the cache
BUFFERS = 2  # chunk buffers in turn when `wait_taken` is set (one in the flow table, one queued)
POOL = 4  # chunk buffers kept for reuse at most (more when a consumer keeps batches)


def _refs(pool: list[Buf]) -> list[int]:
    """The reference count of each buffer of `pool`, as `sys.getrefcount` sees it here."""
    return [sys.getrefcount(b) for b in pool]


# the count of a buffer only its pool refers to, measured by the same code as the lookups (so
# an interpreter that counts a loop's references differently cannot make a used buffer look
# free)
FREE_REFS = _refs([np.empty(1, np.uint8)])[0]


class Chunks:
    """Chunk buffers of `chunk` bytes (more for one larger record) filled from `fh`; the
    first one of `first` bytes (default `chunk`)."""

    def __init__(
        self, fh: io.BufferedReader, chunk: int, first: int = 0, mapper: Mapper | None = None,
        name: str = "",
    ) -> None:  # fmt: skip
        self._fh = fh
        self.mapper = mapper  # map the chunks instead of reading them (module docstring)
        self._guard = mapper  # kept for `check` if mapping stops
        self._name = name  # the file, for errors
        self.chunk = chunk
        self._next = first or chunk  # the size of the next chunk
        self._pool: list[Buf] = []  # chunk buffers, reused once nothing refers to them
        self.reused = 0  # chunks read into a pooled buffer
        self.tap: Tap | None = None  # see `CaptureReader.tap`
        # both buffers held: wait for a queued batch to be taken (`buffer`); False: none queued
        self.wait_taken: Callable[[], bool] | None = None
        # the file is read once from start to end: the kernel may read further ahead
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def buffer(self, size: int) -> Buf:
        """A chunk buffer of `size` bytes that nothing else refers to: one of the pool's
        `chunk`-sized buffers whose batches, views and hash regions are all gone (every one of
        them holds a reference to it), else a new one. With `wait_taken` set and `BUFFERS` in
        the pool, none of them free, it first waits for the consumer to take a queued batch
        (as long as one is queued), then looks again."""
        if size != self.chunk:
            return np.empty(size, np.uint8)
        while True:
            for i, refs in enumerate(_refs(self._pool)):
                if refs == FREE_REFS:
                    self.reused += 1
                    return self._pool[i]
            wait = self.wait_taken
            if len(self._pool) < BUFFERS or wait is None or not wait():
                break
        b = np.empty(size, np.uint8)
        self._pool.append(b)
        if len(self._pool) > POOL:  # the oldest is still in use (a batch kept): let it go
            del self._pool[0]
        return b

    def fill(
        self, pending: bytes, need: int = 0, recs: PcapRecords | None = None
    ) -> tuple[Buf, int, bool]:
        """A chunk buffer: pending bytes followed by fresh file data. Returns (buf, len, eof).
        The buffer is not zeroed first (16 MiB a chunk), only its unused tail is. The fresh
        data (never `pending`, read before) goes to `tap` with its file offset first.
        `recs` (pcap) is walked after each `PIECE` read, while the piece is in the cache."""
        size = max(self._next, need, len(pending) + 4096)
        self._next = self.chunk
        if self.mapper is not None:
            mapped = self._map(pending, size, recs)
            if mapped is not None:
                return mapped
        buf = self.buffer(size)
        start = got = len(pending)
        buf[:start] = np.frombuffer(pending, np.uint8)
        view = buf.data
        tap = self.tap
        base = self._fh.tell() - start if tap is not None else 0  # file offset of buf[0]
        eof = False
        while got < size:
            stop = size if recs is None or recs.done else min(size, got + PIECE)
            r = self._fh.readinto(view[got:stop])
            if not r:
                eof = True
                break
            if tap is not None:  # each piece while it is in the cache
                tap(base + got, view[got : got + r])
            got += r
            if recs is not None:
                recs.walk(buf, got)
        if recs is not None:
            recs.walk(buf, got)  # pending bytes only (nothing read)
        buf[got:] = 0
        return buf, got, eof

    def _map(
        self, pending: bytes, size: int, recs: PcapRecords | None
    ) -> tuple[Buf, int, bool] | None:
        """`fill` by a mapping of the file from the pending bytes' offset: (buf, len, eof);
        None when the file cannot be mapped (it is read from now on)."""
        assert self.mapper is not None
        fd = self._fh.fileno()
        start = self._fh.tell() - len(pending)
        avail = min(size, os.fstat(fd).st_size - start)
        if avail < len(pending):  # the file is shorter than what was read of it already
            raise self._shrank()
        buf = self.mapper.map(start, avail) if avail else np.zeros(0, np.uint8)
        if buf is None:
            self.mapper = None
            return None
        self._fh.seek(start + avail)
        if self.tap is not None:
            self.tap(start + len(pending), buf.data[len(pending) :])
        if recs is not None:  # (the reader checks `check` after each walk)
            recs.walk(buf, avail)
        return buf, avail, avail < size

    def check(self) -> None:
        """Raise `CaptureError` if the file shrank under one of this file's mappings (their
        pages past its end then read as zeros: `capture.read.mapped`)."""
        if self._guard is not None and self._guard.shrunk:
            raise self._shrank()

    def _shrank(self) -> CaptureError:
        try:  # the file may be closed by now (the replay's last check)
            size = f" to {os.fstat(self._fh.fileno()).st_size} bytes"
        except (OSError, ValueError):
            try:
                size = f" to {os.stat(self._name).st_size} bytes"
            except OSError:
                size = ""
        return CaptureError(
            f"{self._name}: the file shrank{size} while it was being read "
            "(truncated or rewritten by another process); its replay is incomplete"
        )

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
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

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

    def __init__(self, fh: io.BufferedReader, chunk: int, first: int = 0) -> None:
        self._fh = fh
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

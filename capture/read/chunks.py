"""A capture file read in chunk buffers, for `capture.read.reader`.

Each chunk is one buffer: the bytes left over from the chunk before (a record cut by its
end) followed by fresh file data. Buffers are reused (a pool of `POOL`) once nothing refers to
them any more: no batch, view or hash region (the test is the buffer's reference count, so
whatever keeps a view keeps the buffer). A fresh 8 MiB a chunk cost the kernel's page faults
and page clearing. pcap chunks are read in `PIECE`s, each walked (`PcapRecords`) and handed
to `tap` right after it is read, while it is in the core's cache.
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
POOL = 6  # chunk buffers kept for reuse: the chunk being walked, the batches queued ahead


class Chunks:
    """Chunk buffers of `chunk` bytes (more for one larger record) filled from `fh`."""

    def __init__(self, fh: io.BufferedReader, chunk: int) -> None:
        self._fh = fh
        self.chunk = chunk
        self.pool: list[Buf] = []  # chunk buffers, reused once nothing refers to them
        self.tap: Tap | None = None  # see `CaptureReader.tap`
        # the file is read once from start to end: the kernel may read further ahead
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def buffer(self, size: int) -> Buf:
        """A chunk buffer of `size` bytes: one of the pool's that nothing refers to any more
        (no batch, view or hasher holds it), else a new one (kept for reuse if the pool has
        room and it has the chunk size). Reusing saves the kernel's page faults and page
        clearing of a fresh 8 MiB a chunk."""
        pool = self.pool
        if size == self.chunk:
            for i in range(len(pool)):
                if sys.getrefcount(pool[i]) <= 2:  # the pool's reference and the argument
                    return pool[i]
        buf = np.empty(size, np.uint8)
        if size == self.chunk and len(pool) < POOL:
            pool.append(buf)
        return buf

    def fill(
        self, pending: bytes, need: int = 0, recs: PcapRecords | None = None
    ) -> tuple[Buf, int, bool]:
        """A chunk buffer: pending bytes followed by fresh file data. Returns (buf, len, eof).
        The buffer is not zeroed first (8 MiB a chunk), only its unused tail is. The fresh
        data (never `pending`, read before) goes to `tap` with its file offset first.
        `recs` (pcap) is walked after each `PIECE` read, while the piece is in the cache."""
        size = max(self.chunk, need, len(pending) + 4096)
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

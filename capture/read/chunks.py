"""A capture file read in chunk buffers, for `capture.read.reader`.

Each chunk is one new buffer: the bytes left over from the chunk before (a record cut by its
end) followed by fresh file data; a buffer is never changed once handed on (batches, views
and hash regions refer to it). pcap chunks are read in `PIECE`s, each walked (`PcapRecords`)
and handed to `tap` right after it is read, while it is in the core's cache.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from capture.read.records import PcapRecords

Buf = npt.NDArray[np.uint8]
Tap = Callable[[int, memoryview], None]
PIECE = 512 << 10  # pcap: read this much at a time and walk it while it is in the cache


class Chunks:
    """Chunk buffers of `chunk` bytes (more for one larger record) filled from `fh`; the
    first one of `first` bytes (default `chunk`)."""

    def __init__(self, fh: io.BufferedReader, chunk: int, first: int = 0) -> None:
        self._fh = fh
        self.chunk = chunk
        self._next = first or chunk  # the size of the next chunk
        self.tap: Tap | None = None  # see `CaptureReader.tap`
        # the file is read once from start to end: the kernel may read further ahead
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def buffer(self, size: int) -> Buf:
        """A new chunk buffer of `size` bytes: each batch keeps its own to the end. Reusing
        buffers once nothing referred to them (a pool, tested by reference count) made more
        page faults than this (38k against 30k on the 2M-packet bench capture): glibc hands
        back the chunk just freed, already mapped."""
        return np.empty(size, np.uint8)

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

"""One batch's pcap records, walked while the chunk holding them is read.

`PcapRecords.walk(buf, length)` walks the complete records of `buf` from where the last call
stopped up to `length` (C: `walk_pcap_ts` in `_fastwalk.c`, else `walk.walk_pcap`), so the
reader can walk each piece of a chunk right after reading it, while the piece is still in the
CPU's cache: walking an 8 MiB chunk after reading all of it missed the cache at every record
header (80 ns a record). Walking in steps finds exactly the records one walk finds: a record
not yet complete is walked at the next step, and a record above the size limit stops the
walk at it (`status == STOP_BAD`) whatever follows. The records come with what the reader
hands on: absolute offsets, timestamps in ns, and the count of bad timestamps (a fraction of a
second at or above one second, kept as it is).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from capture.read.walk import _MOD, STOP_BAD, walk_pcap


class PcapRecords:
    """The records of at most `max_pkts` packets, walked from `start` in one buffer."""

    def __init__(
        self, max_pkts: int, swapped: bool, caplimit: int, nsec: bool, start: int = 0
    ) -> None:
        self.max = max_pkts
        self.swapped = swapped
        self.caplimit = caplimit
        self.nsec = nsec
        self.off: npt.NDArray[np.int64] = np.empty(max_pkts, np.int64)
        self.caplen: npt.NDArray[np.int32] = np.empty(max_pkts, np.int32)
        self.wirelen: npt.NDArray[np.int32] = np.empty(max_pkts, np.int32)
        self.ts: npt.NDArray[np.int64] = np.empty(max_pkts, np.int64)
        self.n = 0
        self.bad_ts = 0
        self.consumed = start  # the buffer position after the last record walked
        self.status = 0
        self._c: tuple[Any, ...] | None = None  # the C call's pointers, made at the first walk

    @property
    def done(self) -> bool:
        """Whether walking further can find no more (the batch is full or a record is bad)."""
        return self.n >= self.max or self.status == STOP_BAD

    def walk(self, buf: npt.NDArray[np.uint8], length: int) -> None:
        """Walk the complete records in buf[consumed:length] (`length` <= the buffer's size)."""
        if self.done or length > buf.shape[0]:
            return
        if _MOD is not None:
            self._walk_c(_MOD.ffi, _MOD.lib, buf, length)
        else:
            self._walk_py(buf, length)

    def _walk_c(self, ffi: Any, lib: Any, buf: npt.NDArray[np.uint8], length: int) -> None:
        if self._c is None:  # once per batch: a chunk is walked in many steps
            cast = ffi.cast
            self._c = (
                cast("int64_t *", self.off.ctypes.data),
                cast("int32_t *", self.caplen.ctypes.data),
                cast("int32_t *", self.wirelen.ctypes.data),
                cast("int64_t *", self.ts.ctypes.data),
                ffi.new("int64_t[2]"),  # bad timestamps, consumed
                ffi.new("int *"),
            )
        off, caplen, wirelen, ts, out, status = self._c
        n = self.n
        out[0] = 0
        got = lib.walk_pcap_ts(
            ffi.from_buffer("uint8_t[]", buf),
            self.consumed,
            length,
            int(self.swapped),
            self.max - n,
            self.caplimit,
            1 if self.nsec else 1000,
            10**9 if self.nsec else 10**6,
            off + n,
            caplen + n,
            wirelen + n,
            ts + n,
            out,
            out + 1,
            status,
        )
        self.n += int(got)
        self.bad_ts += int(out[0])
        self.consumed = int(out[1])
        self.status = int(status[0])

    def _walk_py(self, buf: npt.NDArray[np.uint8], length: int) -> None:
        start, n = self.consumed, self.n
        w = walk_pcap(buf.data[start:], length - start, self.swapped, self.max - n, self.caplimit)
        k = len(w.off)
        end = n + k
        self.off[n:end] = w.off + start
        self.caplen[n:end] = w.caplen
        self.wirelen[n:end] = w.wirelen
        unit, limit = (1, 10**9) if self.nsec else (1000, 10**6)
        self.ts[n:end] = w.sec.astype(np.int64) * 1_000_000_000 + w.frac.astype(np.int64) * unit
        self.bad_ts += int(np.count_nonzero(w.frac >= limit))
        self.n = end
        self.consumed = start + w.consumed
        self.status = w.status

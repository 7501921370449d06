"""Streaming reader for pcap and pcapng capture files, in bounded chunks.

`open_capture(path)` checks the file header (raising `CaptureError` naming the path and the
problem) and returns a `CaptureReader`; `CaptureReader.batches(max_packets)` yields
`RawBatch`es. The file is taken in chunks of `chunk_bytes` (default 16 MiB, grown only to hold
one record larger than that, up to a hard cap), mapped from the page cache where that can be
guarded against the file shrinking (`capture.read.mapped`), else read: peak memory does not
depend on file size. The first chunk is at most `FIRST_CHUNK` (1 MiB), so the first batch comes
early; larger chunks after it cost the flow table less per packet (docs/capture-flow-scale.md).
Record headers are walked by `capture.read.walk` (C via cffi, or pure Python).

Formats: pcap with microsecond or nanosecond magic in either byte order (the link-type field
is masked to its low 16 bits); pcapng with SHBs in either byte order, several sections and
interfaces with their own link types, `if_tsresol` and `if_tsoffset`, Enhanced/Simple/obsolete
Packet Blocks; other blocks are skipped. Only regular files are read: a FIFO, socket, device or
directory is refused with a `CaptureError` naming the path (`capture.read.regular`).

Problems after a valid file header never raise: they are counted in `summary`
(``truncated_record`` when the file ends inside a record, including a record whose claimed
length runs past the end of the file; ``oversize_record`` for a record or block larger than
the limit (pcap: the larger of the snap length and 256 KiB, capped at 64 MiB; pcapng: 64 MiB),
skipped by its length without reading it into memory; ``bad_record`` for a corrupt length that
ends the readable part of the file, ``bad_timestamp``, ``bad_interface``, ...). The exception:
a file that shrinks under a mapped chunk raises `CaptureError` (`check`).
"""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from capture import CaptureError
from capture.batch import RawBatch
from capture.read.chunks import Chunks, Tap
from capture.read.interfaces import (
    MAX_BLOCK,
    PCAPNG_BOM,
    Interface,
    parse_idb,
    parse_shb,
    pcapng_batch,
)
from capture.read.mapped import Mapper
from capture.read.records import PcapRecords
from capture.read.regular import open_regular
from capture.read.walk import STOP_BAD, STOP_BLOCK, walk_pcapng

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A

DEFAULT_CHUNK = 16 << 20
FIRST_CHUNK = 1 << 20  # the first chunk of a file: its first batch early (module docstring)
MAX_RECORD = MAX_BLOCK  # larger records/blocks are treated as corruption
Buf = npt.NDArray[np.uint8]
MIN_CAPLIMIT = 262144  # libpcap's MAXIMUM_SNAPLEN: accept records up to this even if snaplen < it
_LEFT_BUFFER = -1  # `_skip`: the skipped record ends beyond the current buffer
_OVERSIZE = -2  # `_parse_idb`: an IDB above MAX_RECORD, skipped like any oversize block


class CaptureReader:
    """An open capture file; iterate `batches()` once. Use as a context manager."""

    def __init__(
        self, path: Path, fh: io.BufferedReader, chunk_bytes: int = DEFAULT_CHUNK,
        mapped: bool = True,
    ) -> None:  # fmt: skip
        self.path = path
        self._fh = fh
        self._chunk = max(int(chunk_bytes), 4096)
        self.summary: dict[str, int] = {}
        self.packets = 0
        self.format = ""
        self.interfaces: list[Interface] = []
        self._swapped = False
        self._nsec = False
        self._caplimit = MIN_CAPLIMIT
        self._skipped_ifaces: set[int] = set()  # pcapng IDBs skipped as oversize
        mapper = Mapper.open(fh.fileno()) if mapped else None  # capture.read.mapped
        self._chunks = Chunks(fh, self._chunk, min(self._chunk, FIRST_CHUNK), mapper, str(path))
        self._sniff()

    # --- header --------------------------------------------------------------------------
    def _fail(self, what: str) -> CaptureError:
        self._fh.close()
        return CaptureError(f"{self.path}: {what}")

    def _sniff(self) -> None:
        head = self._fh.read(24)
        if len(head) == 0:
            raise self._fail("empty file, not a pcap or pcapng capture")
        if len(head) < 4:
            raise self._fail(f"file too short ({len(head)} bytes) for a capture file header")
        le = struct.unpack("<I", head[:4])[0]
        if le == PCAPNG_SHB:
            self.format = "pcapng"
            self._fh.seek(0)
            return
        for magic, nsec in ((PCAP_MAGIC_US, False), (PCAP_MAGIC_NS, True)):
            for order in ("<", ">"):
                if struct.unpack(order + "I", head[:4])[0] == magic:
                    if len(head) < 24:
                        raise self._fail(f"truncated pcap file header ({len(head)} of 24 bytes)")
                    _, vmaj, vmin, _, _, snap, net = struct.unpack(order + "IHHiIII", head)
                    if vmaj != 2:
                        raise self._fail(f"unsupported pcap version {vmaj}.{vmin}")
                    self.format = "pcap-ns" if nsec else "pcap"
                    self._nsec = nsec
                    self._swapped = (order == "<") != (sys.byteorder == "little")
                    linktype = net & 0xFFFF  # high bits: FCS length / reserved
                    self.interfaces = [Interface(linktype=linktype, snaplen=snap)]
                    self._caplimit = min(max(snap, MIN_CAPLIMIT), MAX_RECORD)
                    return
        raise self._fail(f"not a pcap or pcapng file (magic 0x{le:08x})")

    # --- helpers -------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        if n:
            self.summary[key] = self.summary.get(key, 0) + n

    def close(self) -> None:
        self._fh.close()

    def fileno(self) -> int:
        return self._fh.fileno()

    def check(self) -> None:
        """Raise `CaptureError` if the file shrank under a mapped chunk (read as zeros)."""
        self._chunks.check()

    @property
    def tap(self) -> Tap | None:
        """Called with (file offset, view) for each region read, before anything else sees it
        (the ledger's SHA-256: `capture.read.filehash`); the buffer is not changed after."""
        return self._chunks.tap

    @tap.setter
    def tap(self, tap: Tap | None) -> None:
        self._chunks.tap = tap

    @property
    def wait_taken(self) -> Callable[[], bool] | None:
        """With both chunk buffers held, wait for a consumer to take a queued batch (False:
        none queued; `Prefetch.wait_taken`). Unset, a third buffer is taken at once."""
        return self._chunks.wait_taken

    @wait_taken.setter
    def wait_taken(self, wait: Callable[[], bool] | None) -> None:
        self._chunks.wait_taken = wait

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- batches -------------------------------------------------------------------------
    def batches(self, max_packets: int = 65536) -> Iterator[RawBatch]:
        """Yield RawBatches of at most max_packets packets until the end of the file."""
        max_packets = max(1, int(max_packets))
        try:
            if self.format == "pcapng":
                yield from self._pcapng_batches(max_packets)
            else:
                self._fh.seek(24)
                yield from self._pcap_batches(max_packets)
        finally:
            self.close()

    def _pcap_batches(self, max_packets: int) -> Iterator[RawBatch]:
        lt = self.interfaces[0].linktype
        pending = b""
        need = 0
        while True:
            recs: PcapRecords | None = self._records(max_packets, 0)
            buf, length, eof = self._chunks.fill(pending, need, recs)
            need = 0
            pos = 0
            left = False
            while True:
                if recs is None:  # the chunk's first batch was walked while it was read
                    recs = self._records(max_packets, pos)
                    recs.walk(buf, length)
                n, pos, status = recs.n, recs.consumed, recs.status
                self._chunks.check()  # a walk into pages of a shrunk file read zeros
                if n:
                    self.packets += n
                    self._count("bad_timestamp", recs.bad_ts)
                    yield RawBatch(
                        buf=buf,
                        ts_ns=recs.ts[:n],
                        cap_len=recs.caplen[:n],
                        wire_len=recs.wirelen[:n],
                        frame_off=recs.off[:n],
                        linktype=np.full(n, lt, dtype=np.uint16),
                        iface=np.zeros(n, dtype=np.uint16),
                    )
                recs = None
                if status == STOP_BAD:  # caplen above the limit: skip the record
                    cl = struct.unpack_from(">I" if self._big() else "<I", buf.data, pos + 8)[0]
                    nxt = self._skip(buf, pos, length, eof, 16 + cl, None)
                    if nxt is None:
                        return
                    if nxt == _LEFT_BUFFER:
                        left = True
                        break
                    pos = nxt
                    continue
                if n < max_packets:
                    break
            if left:  # skipped past the buffer: the file is positioned after the record
                pending = b""
                continue
            rest = length - pos
            if eof:
                if rest:
                    self._count("truncated_record")
                return
            pending = bytes(buf[pos:length])
            if rest >= 16:  # make room for a record larger than the chunk
                cl = struct.unpack_from(">I" if self._big() else "<I", buf.data, pos + 8)[0]
                need = 16 + cl + 4096

    def _records(self, max_packets: int, start: int) -> PcapRecords:
        return PcapRecords(max_packets, self._swapped, self._caplimit, self._nsec, start)

    def _big(self) -> bool:
        return (sys.byteorder == "big") != self._swapped

    # --- pcapng --------------------------------------------------------------------------
    def _parse_shb(self, buf: Buf, pos: int, length: int) -> int:
        """Parse an SHB at pos; returns its length, or 0 if incomplete. Raises if invalid."""
        blen, swapped = parse_shb(buf.data, pos, length, str(self.path))
        if blen:
            self._swapped = swapped
            self.interfaces = []
        return blen

    def _parse_idb(self, buf: Buf, pos: int, length: int) -> int:
        """Parse an IDB at pos; returns its length, 0 if incomplete, -1 if corrupt."""
        e = ">" if self._big() else "<"
        if pos + 8 > length:
            return 0
        blen = struct.unpack_from(e + "I", buf.data, pos + 4)[0]
        if blen > MAX_RECORD and not blen & 3:
            return _OVERSIZE
        if blen < 20 or blen > MAX_RECORD or blen & 3:
            return -1
        if pos + blen > length:
            return 0
        iface, bad_option = parse_idb(buf.data, pos, int(blen), e)
        if bad_option:
            self._count("bad_option")
        self.interfaces.append(iface)
        return int(blen)

    def _pcapng_batches(self, max_packets: int) -> Iterator[RawBatch]:
        pending = b""
        need = 0
        first = True
        last_ts = 0
        while True:
            buf, length, eof = self._chunks.fill(pending, need)
            need = 0
            pos = 0
            left = False
            arr = buf
            while True:
                if first:
                    blen = self._parse_shb(buf, pos, length)
                    if blen == 0:
                        if eof:
                            raise CaptureError(f"{self.path}: truncated pcapng section header")
                        break
                    first = False
                    pos += blen
                    continue
                w = walk_pcapng(
                    buf.data[pos:], length - pos, self._swapped, max_packets, MAX_RECORD
                )
                n = len(w.off)
                self._chunks.check()
                if n:
                    batch, bad = pcapng_batch(
                        arr, w, pos, last_ts, self.interfaces, self._skipped_ifaces
                    )
                    self._count("bad_interface", bad)
                    self.packets += len(batch) if batch is not None else 0
                    if batch is not None:
                        last_ts = int(batch.ts_ns[-1]) if len(batch) else last_ts
                        yield batch
                pos += w.consumed
                big = 0
                if w.status == STOP_BAD:
                    big = self._oversize_block(buf, pos)
                    if not big:
                        self._count("bad_record")
                        return
                if w.status == STOP_BLOCK:
                    if w.stop_type == PCAPNG_SHB:
                        blen = self._parse_shb_safe(buf, pos, length)
                    else:
                        blen = self._parse_idb(buf, pos, length)
                        if blen == _OVERSIZE:
                            big = self._oversize_block(buf, pos)
                            self._skipped_ifaces.add(len(self.interfaces))
                            self.interfaces.append(Interface(linktype=0xFFFF, snaplen=0))
                    if blen < 0 and not big:
                        self._count("bad_record")
                        return
                    if blen == 0:
                        break
                    if not big:
                        pos += blen
                        continue
                if big:  # a block above the limit: skip it by its length
                    nxt = self._skip(buf, pos, length, eof, big, big)
                    if nxt is None:
                        return
                    if nxt == _LEFT_BUFFER:
                        left = True
                        break
                    pos = nxt
                    continue
                if n < max_packets:
                    break
            if left:  # skipped past the buffer: the file is positioned after the block
                pending = b""
                continue
            rest = length - pos
            if eof:
                if rest:
                    self._count("truncated_record")
                return
            pending = bytes(buf[pos:length])
            if rest >= 12:  # make room for a block larger than the chunk
                e = ">" if self._big() else "<"
                if struct.unpack_from("<I", buf.data, pos)[0] == PCAPNG_SHB:
                    e = "<" if struct.unpack_from("<I", buf.data, pos + 8)[0] == PCAPNG_BOM else ">"
                blen = struct.unpack_from(e + "I", buf.data, pos + 4)[0]
                need = min(blen, MAX_RECORD) + 4096

    def _oversize_block(self, buf: Buf, pos: int) -> int:
        """The length of the pcapng block at pos if it is well framed but above the limit
        (skipped, not corrupt), else 0."""
        e = ">" if self._big() else "<"
        blen = int(struct.unpack_from(e + "I", buf.data, pos + 4)[0])
        return blen if blen > MAX_RECORD and not blen & 3 else 0

    def _skip(
        self, buf: Buf, pos: int, length: int, eof: bool, size: int, trailer: int | None
    ) -> int | None:
        """Skip the oversize record of `size` bytes at buffer position `pos` by its length,
        without reading it into memory. Returns the buffer position after it; `_LEFT_BUFFER`
        when it ends beyond the buffer (the file is then positioned right after it); None when
        the file ends inside it (counted as ``truncated_record``) or its trailing length (pcapng:
        `trailer`) does not match (``bad_record``): the readable part of the file ends there."""
        e = ">" if self._big() else "<"
        if pos + size <= length:
            tail = struct.unpack_from(e + "I", buf.data, pos + size - 4)[0]
            if trailer is not None and tail != trailer:
                self._count("bad_record")
                return None
            self._count("oversize_record")
            return pos + size
        end = self._fh.tell() + (pos + size - length)  # the file offset after the record
        if eof or end > os.fstat(self._fh.fileno()).st_size:
            self._count("truncated_record")
            return None
        if trailer is not None:
            self._fh.seek(end - 4)
            if struct.unpack(e + "I", self._fh.read(4))[0] != trailer:
                self._count("bad_record")
                return None
        self._fh.seek(end)
        self._count("oversize_record")
        return _LEFT_BUFFER

    def _parse_shb_safe(self, buf: Buf, pos: int, length: int) -> int:
        try:
            return self._parse_shb(buf, pos, length)
        except CaptureError:
            return -1


def open_capture(
    path: str | Path, chunk_bytes: int = DEFAULT_CHUNK, mapped: bool = True
) -> CaptureReader:
    """Open a pcap/pcapng file; raises CaptureError(f"{path}: ...") if it is not readable or
    not a regular file (FIFO, socket, device, directory). `mapped`: chunks mapped rather than
    read where that can be guarded (`capture.read.mapped`)."""
    p = Path(path)
    return CaptureReader(p, open_regular(p), chunk_bytes, mapped)

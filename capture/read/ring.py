"""A TPACKET_V3 receive ring on an AF_PACKET socket: the kernel fills blocks of packets in
shared memory and hands each block over whole, so live capture makes no system call per packet.

Each filled block becomes one `RawBatch` (a copy of the block's used bytes, so the block goes
back to the kernel at once). Kernel drops (ring full) come from PACKET_STATISTICS and are
counted, never silent. `LBM_CAPTURE_NO_RING=1` turns the ring off (the caller then reads the
socket one packet at a time), e.g. on kernels without TPACKET_V3.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct

import numpy as np

from capture import CaptureError
from capture.batch import RawBatch

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

# struct tpacket_block_desc / tpacket_hdr_v1 offsets
_BLOCK_STATUS = 8
_BLOCK_NUM_PKTS = 12
_BLOCK_FIRST = 16
_BLOCK_LEN = 20
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac
_PKT_HDR = struct.Struct("=IIIIIIH")
_SLL_PKTTYPE = 48 + 10  # sockaddr_ll follows the 48-byte tpacket3_hdr; pkttype at +10
PACKET_OUTGOING = 4


def ring_disabled() -> bool:
    return os.environ.get("LBM_CAPTURE_NO_RING", "") not in ("", "0")


class PacketRing:
    """The mapped ring of one bound AF_PACKET socket."""

    def __init__(
        self,
        sock: socket.socket,
        interface: str,
        linktype: int,
        *,
        block_size: int = 1 << 20,
        block_nr: int = 64,
        retire_ms: int = 100,
        skip_outgoing: bool = False,
    ) -> None:
        self.linktype = linktype
        self.skip_outgoing = skip_outgoing
        self.block_size = block_size
        self.block_nr = block_nr
        frame_size = 1 << 11
        req = struct.pack(
            "7I", block_size, block_nr, frame_size, block_size * block_nr // frame_size,
            retire_ms, 0, 0,
        )  # fmt: skip
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(
                sock.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )  # fmt: skip
        except OSError as exc:
            raise CaptureError(f"{interface}: cannot set up a TPACKET_V3 ring ({exc})") from None
        self.sock = sock
        self.current = 0

    def drain(self, max_blocks: int | None = None) -> list[RawBatch]:
        """Every block the kernel has handed over (up to `max_blocks`), as batches."""
        out: list[RawBatch] = []
        limit = self.block_nr if max_blocks is None else max_blocks
        while len(out) < limit:
            base = self.current * self.block_size
            (status,) = struct.unpack_from("I", self.map, base + _BLOCK_STATUS)
            if not status & TP_STATUS_USER:
                break
            num, first, used = struct.unpack_from("III", self.map, base + _BLOCK_NUM_PKTS)
            used = min(max(used, first), self.block_size)
            block = np.frombuffer(self.map, np.uint8, count=used, offset=base).copy()
            struct.pack_into("I", self.map, base + _BLOCK_STATUS, TP_STATUS_KERNEL)
            self.current = (self.current + 1) % self.block_nr
            if num:
                out.append(self._batch(block, num, first))
        return out

    def _batch(self, block: np.ndarray, num: int, first: int) -> RawBatch:
        ts = np.empty(num, np.int64)
        cap = np.empty(num, np.int32)
        wire = np.empty(num, np.int32)
        offs = np.empty(num, np.int64)
        off, n, size = first, 0, block.shape[0]
        unpack, view = _PKT_HDR.unpack_from, block.data
        for _ in range(num):
            if off + _SLL_PKTTYPE >= size:
                break
            nxt, sec, nsec, snap, length, _status, mac = unpack(view, off)
            if not (self.skip_outgoing and view[off + _SLL_PKTTYPE] == PACKET_OUTGOING):
                start = off + mac
                snap = max(0, min(snap, size - start))
                ts[n], cap[n], wire[n], offs[n] = sec * 1_000_000_000 + nsec, snap, length, start
                n += 1
            if nxt == 0:
                break
            off += nxt
        return RawBatch(
            buf=block,
            ts_ns=ts[:n],
            cap_len=cap[:n],
            wire_len=wire[:n],
            frame_off=offs[:n],
            linktype=np.full(n, self.linktype, np.uint16),
            iface=np.zeros(n, np.uint16),
        )

    def drops(self) -> int:
        """Packets the kernel dropped since the last call (ring full)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        _packets, dropped, _freeze = struct.unpack("III", raw)
        return int(dropped)

    def close(self) -> None:
        self.map.close()

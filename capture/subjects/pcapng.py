"""Minimal pcapng writer for archive records: one Section Header Block, one Interface
Description Block per link type met, then Enhanced Packet Blocks with nanosecond timestamps.

A record is a complete pcapng stream on its own, so each archived record opens in tshark or
Wireshark once decrypted; `lbm archive export` can concatenate records (pcapng allows several
sections in one file).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SNAPLEN = 262144


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def shb() -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    total = 12 + len(body)
    return struct.pack("<II", SHB_TYPE, total) + body + struct.pack("<I", total)


def idb(linktype: int) -> bytes:
    # option if_tsresol (9) = 9: timestamps in nanoseconds; then opt_endofopt
    opts = struct.pack("<HHB", 9, 1, 9) + b"\x00" * 3 + struct.pack("<HH", 0, 0)
    body = struct.pack("<HHI", linktype, 0, SNAPLEN) + opts
    total = 12 + len(body)
    return struct.pack("<II", IDB_TYPE, total) + body + struct.pack("<I", total)


def epb(iface: int, ts_ns: int, frame: bytes, wire_len: int) -> bytes:
    pad = _pad(len(frame))
    total = 32 + len(frame) + pad
    head = struct.pack(
        "<IIIIIII",
        EPB_TYPE,
        total,
        iface,
        (ts_ns >> 32) & 0xFFFFFFFF,
        ts_ns & 0xFFFFFFFF,
        len(frame),
        max(wire_len, len(frame)),
    )
    return head + frame + b"\x00" * pad + struct.pack("<I", total)


class PcapngRecord:
    """Streams one record's pcapng blocks to `write` (an archive sink's write)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._ifaces: dict[int, int] = {}
        self._write(shb())

    def packet(self, linktype: int, ts_ns: int, frame: bytes, wire_len: int) -> None:
        iface = self._ifaces.get(linktype)
        if iface is None:
            iface = self._ifaces[linktype] = len(self._ifaces)
            self._write(idb(linktype))
        self._write(epb(iface, ts_ns, frame, wire_len))

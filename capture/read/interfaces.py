"""pcapng interfaces for `capture.read.reader`: an Interface Description Block's link type, snap
length and timestamp units (``if_tsresol``, ``if_tsoffset``), and raw timestamps of one
interface converted to nanoseconds (numpy, a whole batch at once). A pcap file has one
interface, described by its file header.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

import numpy as np

from capture import CaptureError
from capture.batch import RawBatch
from capture.read.walk import PcapngWalk

PCAPNG_BOM = 0x1A2B3C4D
MAX_BLOCK = 64 << 20  # larger blocks are treated as corruption (`reader.MAX_RECORD`)


@dataclass
class Interface:
    """One pcapng interface (or the single pcap 'interface')."""

    linktype: int
    snaplen: int
    ts_div: int = 1000  # raw ts units -> ns: ns = raw * ts_mul // ts_div (decimal resolutions)
    ts_mul: int = 1
    ts_pow2: int = -1  # if >= 0: binary resolution 2^-ts_pow2 s
    ts_offset_s: int = 0


def set_resolution(iface: Interface, code: int) -> None:
    if code & 0x80:
        iface.ts_pow2 = code & 0x7F
        return
    exp = code & 0x7F
    iface.ts_pow2 = -1
    if exp <= 9:
        iface.ts_mul, iface.ts_div = 10 ** (9 - exp), 1
    else:
        iface.ts_mul, iface.ts_div = 1, 10 ** (exp - 9)


def raw_to_ns(raw: np.ndarray, iface: Interface) -> np.ndarray:
    """Convert raw pcapng timestamps (uint64) of one interface to int64 ns."""
    r = raw.astype(np.uint64)
    if iface.ts_pow2 >= 0:
        k = np.uint64(iface.ts_pow2)
        secs = r >> k
        frac = r & ((np.uint64(1) << k) - np.uint64(1)) if iface.ts_pow2 < 64 else r
        ns = secs.astype(np.int64) * 1_000_000_000 + (
            (frac.astype(np.float64) * 1e9) / float(2**iface.ts_pow2)
        ).astype(np.int64)
    elif iface.ts_div > 1:
        ns = (r // np.uint64(iface.ts_div)).astype(np.int64)
    else:
        ns = (r * np.uint64(iface.ts_mul)).astype(np.int64)
    return ns + np.int64(iface.ts_offset_s * 1_000_000_000)


def parse_shb(data: memoryview, pos: int, length: int, path: str) -> tuple[int, bool]:
    """The pcapng Section Header Block at `pos` of data[:length]: (its length, True if its byte
    order is not this machine's); (0, False) if it is incomplete. Raises CaptureError naming
    `path` if it is invalid."""
    if pos + 12 > length:
        return 0, False
    bom = struct.unpack_from("<I", data, pos + 8)[0]
    if bom == PCAPNG_BOM:
        order = "<"
    elif bom == 0x4D3C2B1A:
        order = ">"
    else:
        raise CaptureError(f"{path}: pcapng section header with bad byte-order magic")
    blen = struct.unpack_from(order + "I", data, pos + 4)[0]
    if blen < 28 or blen > MAX_BLOCK or blen & 3:
        raise CaptureError(f"{path}: pcapng section header with bad length {blen}")
    if pos + blen > length:
        return 0, False
    major = struct.unpack_from(order + "H", data, pos + 12)[0]
    if major != 1:
        raise CaptureError(f"{path}: unsupported pcapng version {major}")
    return int(blen), (order == "<") != (sys.byteorder == "little")


def parse_idb(data: memoryview, pos: int, blen: int, e: str) -> tuple[Interface, bool]:
    """The interface described by the complete IDB of `blen` bytes at `pos` in `data` (byte
    order `e`, "<" or ">"); the flag is true when an option ran past the block (options from
    there on are ignored)."""
    lt, _, snap = struct.unpack_from(e + "HHI", data, pos + 8)
    iface = Interface(linktype=lt, snaplen=snap)
    set_resolution(iface, 6)
    o, end = pos + 16, pos + blen - 4
    while o + 4 <= end:
        code, olen = struct.unpack_from(e + "HH", data, o)
        if code == 0:
            break
        if o + 4 + olen > end:
            return iface, True
        if code == 9 and olen >= 1:
            set_resolution(iface, data[o + 4])
        elif code == 14 and olen >= 8:
            iface.ts_offset_s = struct.unpack_from(e + "q", data, o + 4)[0]
        o += 4 + ((olen + 3) & ~3)
    return iface, False


def pcapng_batch(
    buf: np.ndarray,
    w: PcapngWalk,
    pos: int,
    last_ts: int,
    interfaces: list[Interface],
    skipped: set[int],
) -> tuple[RawBatch | None, int]:
    """The batch of the packets `w` found at buffer position `pos` (timestamps in ns by their
    interface's units; an SPB's is the packet's before, `last_ts` for the first), and the
    number left out because their interface is unknown or its IDB was skipped (`skipped`)."""
    n = len(w.off)
    iface = w.iface
    bad = iface >= len(interfaces)
    if skipped:  # packets of an interface whose IDB was skipped
        bad |= np.isin(iface, np.fromiter(skipped, np.uint32))
    nbad = int(np.count_nonzero(bad))
    if nbad:
        keep = ~bad
        w = PcapngWalk(
            w.off[keep],
            w.caplen[keep],
            w.wirelen[keep],
            iface[keep],
            w.ts[keep],
            w.consumed,
            w.status,
            w.stop_type,
        )
        iface = w.iface
        n = len(w.off)
        if n == 0:
            return None, nbad
    ts = np.zeros(n, dtype=np.int64)
    lt = np.zeros(n, dtype=np.uint16)
    for i in np.unique(iface):
        m = iface == i
        itf = interfaces[int(i)]
        ts[m] = raw_to_ns(w.ts[m], itf)
        lt[m] = itf.linktype
    spb = w.ts == np.uint64(0xFFFFFFFFFFFFFFFF)
    if spb.any():  # SPBs carry no timestamp: use the previous packet's
        idx = np.where(~spb, np.arange(n), -1)
        np.maximum.accumulate(idx, out=idx)
        ts = np.where(idx >= 0, ts[np.maximum(idx, 0)], last_ts)
    batch = RawBatch(
        buf=buf,
        ts_ns=ts,
        cap_len=w.caplen,
        wire_len=w.wirelen,
        frame_off=w.off + pos,
        linktype=lt,
        iface=iface.astype(np.uint16),
    )
    return batch, nbad

"""Record-header walking for pcap/pcapng: a small C extension (cffi), else pure Python.

Walking record headers is sequential, so numpy cannot do it; `_fastwalk.c` does it in C.
The extension is built and loaded by `capture.native.build` (one scheme for all of the capture
path's C code: source-hash keyed cache in `$LBM_CAPTURE_CACHE`, else `<venv>/var/lbm-capture`,
else `~/.cache/lbm-gateway`; install prebuilds with ``python -m capture.native.build``, which
``python -m capture.read.walk`` also runs). Without a compiler (or with ``LBM_CAPTURE_NO_C=1``)
the pure-Python walkers below are used: same results, slower.

Both implementations share one signature per format and return numpy arrays; see
`walk_pcap` / `walk_pcapng`.

`decode_common` decodes the common case of a batch (Ethernet or raw IP, IPv4 without
fragmentation or IPv6 without extension headers, a transport that is not a tunnel, every
header complete) in one C pass that releases the GIL, and returns the other packets' indices
for `capture.decode`'s numpy path; without the C extension it returns None (all numpy).
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from capture import CaptureError
from capture.native import build

if TYPE_CHECKING:
    from capture.batch import PacketBatch, RawBatch

STOP_OK = 0  # max packets reached or next record incomplete
STOP_BAD = 1  # bad record/block length at `consumed`
STOP_BLOCK = 2  # pcapng SHB/IDB at `consumed`: caller parses it


@dataclass
class PcapWalk:
    """Records found by `walk_pcap` (offsets relative to the walked buffer)."""

    off: npt.NDArray[np.int64]
    caplen: npt.NDArray[np.int32]
    wirelen: npt.NDArray[np.int32]
    sec: npt.NDArray[np.uint32]
    frac: npt.NDArray[np.uint32]
    consumed: int
    status: int


@dataclass
class PcapngWalk:
    """Packets found by `walk_pcapng`; ts is raw interface units, UINT64_MAX for SPB."""

    off: npt.NDArray[np.int64]
    caplen: npt.NDArray[np.int32]
    wirelen: npt.NDArray[np.int32]
    iface: npt.NDArray[np.uint32]
    ts: npt.NDArray[np.uint64]
    consumed: int
    status: int
    stop_type: int


def _load() -> Any:
    if os.environ.get("LBM_CAPTURE_NO_C"):
        return None
    try:
        return build.load(build.FASTWALK)
    except CaptureError:  # no compiler and no build: the pure-Python walkers
        return None


_MOD: Any = _load()
IMPLEMENTATION = "c" if _MOD is not None else "python"


def walk_pcap(
    buf: bytearray | bytes | memoryview, length: int, swapped: bool, max_pkts: int, caplimit: int
) -> PcapWalk:
    """Walk complete pcap records (16-byte header + data) in buf[0:length]."""
    off = np.empty(max_pkts, dtype=np.int64)
    caplen = np.empty(max_pkts, dtype=np.int32)
    wirelen = np.empty(max_pkts, dtype=np.int32)
    sec = np.empty(max_pkts, dtype=np.uint32)
    frac = np.empty(max_pkts, dtype=np.uint32)
    if _MOD is not None:
        ffi, lib = _MOD.ffi, _MOD.lib
        consumed = ffi.new("int64_t *")
        status = ffi.new("int *")

        def p(a: np.ndarray, t: str) -> Any:
            return ffi.cast(t, a.ctypes.data)

        n = lib.walk_pcap(
            ffi.from_buffer("uint8_t[]", buf),
            length,
            int(swapped),
            max_pkts,
            caplimit,
            p(off, "int64_t *"),
            p(caplen, "int32_t *"),
            p(wirelen, "int32_t *"),
            p(sec, "uint32_t *"),
            p(frac, "uint32_t *"),
            consumed,
            status,
        )
        c, st = int(consumed[0]), int(status[0])
    else:
        n, c, st = _py_walk_pcap(
            buf, length, swapped, max_pkts, caplimit, off, caplen, wirelen, sec, frac
        )
    return PcapWalk(off[:n], caplen[:n], wirelen[:n], sec[:n], frac[:n], c, st)


def walk_pcapng(
    buf: bytearray | bytes | memoryview, length: int, swapped: bool, max_pkts: int, blocklimit: int
) -> PcapngWalk:
    """Walk pcapng blocks in buf[0:length] until max_pkts, an SHB/IDB, or incomplete data."""
    off = np.empty(max_pkts, dtype=np.int64)
    caplen = np.empty(max_pkts, dtype=np.int32)
    wirelen = np.empty(max_pkts, dtype=np.int32)
    iface = np.empty(max_pkts, dtype=np.uint32)
    ts = np.empty(max_pkts, dtype=np.uint64)
    if _MOD is not None:
        ffi, lib = _MOD.ffi, _MOD.lib
        consumed = ffi.new("int64_t *")
        status = ffi.new("int *")
        stop = ffi.new("uint32_t *")

        def p(a: np.ndarray, t: str) -> Any:
            return ffi.cast(t, a.ctypes.data)

        n = lib.walk_pcapng(
            ffi.from_buffer("uint8_t[]", buf),
            length,
            int(swapped),
            max_pkts,
            blocklimit,
            p(off, "int64_t *"),
            p(caplen, "int32_t *"),
            p(wirelen, "int32_t *"),
            p(iface, "uint32_t *"),
            p(ts, "uint64_t *"),
            consumed,
            status,
            stop,
        )
        c, st, stop_type = int(consumed[0]), int(status[0]), int(stop[0])
    else:
        n, c, st, stop_type = _py_walk_pcapng(
            buf, length, swapped, max_pkts, blocklimit, off, caplen, wirelen, iface, ts
        )
    return PcapngWalk(off[:n], caplen[:n], wirelen[:n], iface[:n], ts[:n], c, st, stop_type)


_COLS = {  # struct lbm_cols: PacketBatch column -> its dtype
    "status": np.uint8,
    "ip_version": np.uint8,
    "proto": np.uint8,
    "src": np.uint8,
    "dst": np.uint8,
    "sport": np.uint16,
    "dport": np.uint16,
    "ip_len": np.int32,
    "payload_len": np.int32,
    "tcp_flags": np.uint8,
    "tcp_seq": np.uint32,
    "tcp_ack": np.uint32,
    "payload_off": np.int64,
    "payload_cap": np.int32,
    "vlan": np.int32,
    "inner_vlan": np.int32,
    "l3_off": np.int64,
}


def decode_common(
    buf: npt.NDArray[np.uint8], buflen: int, raw: RawBatch, out: PacketBatch
) -> npt.NDArray[np.int64] | None:
    """Decode the common-case packets of `raw` into `out` (its columns as `empty_for` made
    them, C-contiguous); returns the indices of the others (sorted), or None without C.
    `buf` may be padded beyond `buflen`, the length records are checked against."""
    if _MOD is None:
        return None
    ffi, lib = _MOD.ffi, _MOD.lib
    n = len(raw)
    off = np.ascontiguousarray(raw.frame_off, np.int64)
    cap = np.ascontiguousarray(raw.cap_len, np.int32)
    lt = np.ascontiguousarray(raw.linktype, np.uint16)
    cols = ffi.new("struct lbm_cols *")
    for name, dtype in _COLS.items():
        col = getattr(out, name)
        size = n * 16 if name in ("src", "dst") else n
        if (
            col.dtype != dtype
            or col.size != size
            or not col.flags.c_contiguous
            or not col.flags.writeable
        ):  # never with empty_for's columns: C must not write past one
            raise ValueError(f"decode_common: column {name} is not a writable {dtype} array")
        setattr(cols, name, ffi.cast(ffi.typeof(getattr(cols, name)), col.ctypes.data))
    slow = np.empty(n, dtype=np.int64)
    ns = lib.decode_common(
        ffi.from_buffer("uint8_t[]", buf),
        buflen,
        n,
        ffi.cast("int64_t *", off.ctypes.data),
        ffi.cast("int32_t *", cap.ctypes.data),
        ffi.cast("uint16_t *", lt.ctypes.data),
        cols,
        ffi.cast("int64_t *", slow.ctypes.data),
    )
    return slow[:ns]


def _py_walk_pcap(
    buf: bytearray | bytes | memoryview,
    length: int,
    swapped: bool,
    max_pkts: int,
    caplimit: int,
    off: np.ndarray,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    sec: np.ndarray,
    frac: np.ndarray,
) -> tuple[int, int, int]:
    little = (sys.byteorder == "little") != swapped
    hdr = struct.Struct("<IIII" if little else ">IIII")
    pos = n = 0
    while n < max_pkts and pos + 16 <= length:
        s, f, cl, wl = hdr.unpack_from(buf, pos)
        if cl > caplimit:
            return n, pos, STOP_BAD
        if pos + 16 + cl > length:
            break
        sec[n], frac[n], caplen[n] = s, f, cl
        wirelen[n] = min(wl, 0x7FFFFFFF)
        off[n] = pos + 16
        pos += 16 + cl
        n += 1
    return n, pos, STOP_OK


def _py_walk_pcapng(
    buf: bytearray | bytes | memoryview,
    length: int,
    swapped: bool,
    max_pkts: int,
    blocklimit: int,
    off: np.ndarray,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    iface: np.ndarray,
    ts: np.ndarray,
) -> tuple[int, int, int, int]:
    native_little = sys.byteorder == "little"
    little = native_little != swapped
    e = "<" if little else ">"
    u32, u16 = struct.Struct(e + "I"), struct.Struct(e + "H")
    pos = n = 0
    while n < max_pkts and pos + 12 <= length:
        btype = u32.unpack_from(buf, pos)[0]
        blen = u32.unpack_from(buf, pos + 4)[0]
        if btype in (0x0A0D0D0A, 1):
            return n, pos, STOP_BLOCK, btype
        if blen < 12 or blen > blocklimit or blen & 3:
            return n, pos, STOP_BAD, btype
        if pos + blen > length:
            break
        if btype in (6, 2):
            if blen < 32:
                return n, pos, STOP_BAD, btype
            cl = u32.unpack_from(buf, pos + 20)[0]
            wl = u32.unpack_from(buf, pos + 24)[0]
            if cl > blen - 32:
                return n, pos, STOP_BAD, btype
            iface[n] = (
                u32.unpack_from(buf, pos + 8)[0] if btype == 6 else u16.unpack_from(buf, pos + 8)[0]
            )
            hi, lo = u32.unpack_from(buf, pos + 12)[0], u32.unpack_from(buf, pos + 16)[0]
            ts[n] = (hi << 32) | lo
            caplen[n], wirelen[n], off[n] = cl, min(wl, 0x7FFFFFFF), pos + 28
            n += 1
        elif btype == 3:
            if blen < 16:
                return n, pos, STOP_BAD, btype
            wl = u32.unpack_from(buf, pos + 8)[0]
            iface[n], ts[n] = 0, 0xFFFFFFFFFFFFFFFF
            caplen[n], wirelen[n], off[n] = min(wl, blen - 16), min(wl, 0x7FFFFFFF), pos + 12
            n += 1
        pos += blen
    return n, pos, STOP_OK, 0


if __name__ == "__main__":
    # install-time prebuild of every capture extension (the Makefile's entry point)
    sys.exit(build.main())

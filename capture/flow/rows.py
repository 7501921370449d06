"""Turn ended flows of a `FlowTable` into `flow` columns with Zeek conn.log fields.

Columns, not row dicts: TCP sizes, states and histories of all ended flows come from one C
call, counters are array slices, and only address text and Community IDs are per flow.
Field names follow conn.log (`id.orig_h` becomes `orig_h`); times are ns since the epoch.
`to_rows` turns columns into row dicts (tests, small tools).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from capture.flow import tcpstate
from capture.flow.keys import PROTO_NAMES, community_id_array

if TYPE_CHECKING:
    import pyarrow as pa

    from capture.flow.table import FlowTable

Columns = dict[str, Any]
HIST_MAX = 32
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def addr_text(b: bytes) -> str:
    """Text of one 16-byte address."""
    if b[:12] == _V4_PREFIX:
        return socket.inet_ntop(socket.AF_INET, b[12:])
    if b[:12] == bytes(12):
        return str(ipaddress.IPv6Address(b))
    return socket.inet_ntop(socket.AF_INET6, b)


def addr_texts(a: npt.NDArray[np.uint8]) -> list[str]:
    """Text of (k, 16) addresses (IPv4-mapped shown as dotted quad), fast."""
    raw = np.ascontiguousarray(a, np.uint8).tobytes()
    out = []
    ntop = socket.inet_ntop
    for i in range(0, len(raw), 16):
        b = raw[i : i + 16]
        if b[:12] == _V4_PREFIX:
            out.append(ntop(socket.AF_INET, b[12:]))
        elif b[:12] == bytes(12):
            out.append(str(ipaddress.IPv6Address(b)))  # glibc would print ::a.b.c.d
        else:
            out.append(ntop(socket.AF_INET6, b))
    return out


_UDP_HIST = np.array(
    # index: flipped * 8 + responder first * 4 + orig sent * 2 + resp sent
    [
        ("^" if f else "") + ("d" if rr else "") + ("D" if oo else "")
        if rf
        else ("^" if f else "") + ("D" if oo else "") + ("d" if rr else "")
        for f in (0, 1)
        for rf in (0, 1)
        for oo in (0, 1)
        for rr in (0, 1)
    ],
    dtype=object,
)
_UDP_HIST_LEN = np.array([len(h) for h in _UDP_HIST], np.int32)
_UDP_HIST_BYTES = np.zeros((16, HIST_MAX), np.uint8)
for _i, _h in enumerate(_UDP_HIST):
    _UDP_HIST_BYTES[_i, : len(_h)] = np.frombuffer(_h.encode(), np.uint8)
_ST_S0, _ST_SF, _ST_SHR, _ST_OTH = (
    tcpstate.CONN_STATES.index(x) for x in ("S0", "SF", "SHR", "OTH")
)


_UNKNOWN = np.array([p not in PROTO_NAMES for p in range(256)])


def arrow_text(offsets: npt.NDArray[np.int32], data: Any, n: int) -> pa.Array:
    """An Arrow string array of n values from its int32 offsets (n + 1) and data buffer
    (no Python object per value). The buffers are kept alive by the array."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def fixed_text(raw: npt.NDArray[Any]) -> pa.Array:
    """An Arrow string array from a fixed-width bytes (`S<w>`) array whose values all have
    exactly w ASCII bytes (uids, Community IDs)."""
    raw = np.ascontiguousarray(raw)
    n, w = raw.size, raw.dtype.itemsize
    return arrow_text(np.arange(0, (n + 1) * w, w, dtype=np.int32), raw.view(np.uint8), n)


def addr_array(a: npt.NDArray[np.uint8]) -> pa.Array:
    """Text of (k, 16) addresses as an Arrow string array (the same text as `addr_texts`),
    written by one C pass (`addr_text` in `_flowacct.c`) into the array's buffers."""
    a = np.ascontiguousarray(a, np.uint8).reshape(-1, 16)
    k = a.shape[0]
    offsets = np.zeros(k + 1, np.int32)
    cap = 40 * k  # the longest text of an address, ffff:...:ffff, is 39 bytes
    data = np.zeros(max(cap, 1), np.uint8)
    fb = tcpstate.ffi.from_buffer
    w = int(
        tcpstate.lib.addr_text(
            fb("uint8_t[]", a), k, fb("int32_t[]", offsets), fb("char[]", data), cap
        )
    )
    if w < 0:
        raise ValueError("addr_text: an address did not fit its text buffer")
    return arrow_text(offsets, data[:w], k)


class TextTable:
    """A small table of texts taken by code into an Arrow string array with numpy (no
    Python object per row, no Arrow compute call)."""

    def __init__(self, texts: list[str]) -> None:
        raw = [t.encode() for t in texts]
        width = max(1, *(len(r) for r in raw))
        self._len = np.array([len(r) for r in raw], np.int32)
        self._bytes = np.zeros((len(raw), width), np.uint8)
        for i, r in enumerate(raw):
            self._bytes[i, : len(r)] = np.frombuffer(r, np.uint8)

    def take(self, codes: npt.NDArray[Any]) -> pa.Array:
        codes = np.asarray(codes, np.intp)
        lens = self._len[codes]
        offsets = np.zeros(codes.size + 1, np.int32)
        np.cumsum(lens, out=offsets[1:])
        rows = self._bytes[codes]
        data = rows[np.arange(rows.shape[1])[None, :] < lens[:, None]]
        return arrow_text(offsets, data, codes.size)


@functools.cache
def _state_texts() -> TextTable:
    return TextTable(list(tcpstate.CONN_STATES))


def proto_names(proto: npt.NDArray[np.uint8], other: str = "unknown_transport") -> pa.Array:
    """Zeek's protocol names of `proto` (`other` for protocols without one), as Arrow."""
    return _proto_texts(other).take(proto)


@functools.cache
def _proto_texts(other: str) -> TextTable:
    return TextTable([PROTO_NAMES.get(p, other) for p in range(256)])


def empty_lists(n: int) -> Any:
    """n empty `list<string>` values as an Arrow array, without a Python list per row."""
    import pyarrow as pa  # (a local import: module start-up does not need pyarrow)

    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))


def repeat_text(value: str | None, n: int) -> Any:
    """`[value] * n` as an Arrow string array."""
    import pyarrow as pa

    if value is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _vlan_array(v: npt.NDArray[np.int32]) -> pa.Array:
    """VLAN ids as uint16, null where the flow's first frame had no tag (-1)."""
    import pyarrow as pa

    return pa.array(np.maximum(v, 0).astype(np.uint16), pa.uint16(), mask=v < 0)


def rows_for(t: FlowTable, slots: npt.NDArray[np.int64]) -> Columns:
    """Columns for the flows in `slots` (their current state): numpy arrays for numbers,
    Arrow arrays for text (uid, addresses, protocol, state, history, Community ID), made
    without a Python object per row (`to_rows` gives dicts)."""

    k = slots.size
    proto = t.proto[slots]
    pk = t.pkts[slots]
    pb = t.pbytes[slots]
    ob, rb = pb[:, 0].copy(), pb[:, 1].copy()
    state = np.full(k, _ST_OTH, np.int32)
    # history letters: row i has hl[i] bytes at the start of its HIST_MAX-byte row of `hist`
    hist = np.zeros((k, HIST_MAX), np.uint8)
    hl = np.zeros(k, np.int32)
    missed = np.zeros(k, np.int64)
    tcp = np.flatnonzero(proto == 6)
    if tcp.size:
        ffi, lib = tcpstate.ffi, tcpstate.lib
        ts = np.ascontiguousarray(slots[tcp], np.int64)
        osz = np.zeros(tcp.size, np.int64)
        rsz = np.zeros(tcp.size, np.int64)
        st = np.zeros(tcp.size, np.int32)
        th = np.zeros(tcp.size * HIST_MAX, np.uint8)
        thl = np.zeros(tcp.size, np.int32)
        fb = ffi.from_buffer
        lib.tcp_summary(
            t.tcp,
            tcp.size,
            fb("int64_t[]", ts),
            fb("int64_t[]", osz),
            fb("int64_t[]", rsz),
            fb("int32_t[]", st),
            fb("char[]", th),
            fb("int32_t[]", thl),
        )
        # bytes the sequence space says were sent but no packet carried (capture loss)
        missed[tcp] = np.maximum(osz - pb[tcp, 0], 0) + np.maximum(rsz - pb[tcp, 1], 0)
        ob[tcp], rb[tcp] = osz, rsz
        state[tcp] = st
        hist[tcp] = th.reshape(tcp.size, HIST_MAX)
        hl[tcp] = np.clip(thl, 0, HIST_MAX)
    udp = np.flatnonzero(proto == 17)
    if udp.size:
        o, r = pk[udp, 0] > 0, pk[udp, 1] > 0
        state[udp] = np.where(o, np.where(r, _ST_SF, _ST_S0), np.where(r, _ST_SHR, _ST_OTH))
        flip = t.flipped[slots[udp]]
        resp_first = t.first_dir[slots[udp]] == 1
        code = flip.astype(np.int64) * 8 + resp_first * 4 + o * 2 + r
        hist[udp] = _UDP_HIST_BYTES[code]
        hl[udp] = _UDP_HIST_LEN[code]
    other = np.flatnonzero((proto != 6) & (proto != 17) & t.flipped[slots])
    hist[other, 0] = ord("^")
    hl[other] = 1
    unknown = _UNKNOWN[proto]  # Zeek keeps no sizes for unknown_transport: bytes 0
    if unknown.any():
        ob[unknown] = 0
        rb[unknown] = 0
    hoff = np.zeros(k + 1, np.int32)
    np.cumsum(hl, out=hoff[1:])
    hdata = hist[np.arange(HIST_MAX)[None, :] < hl[:, None]]  # row-major: row after row
    orig_h, resp_h = t.orig_h[slots], t.resp_h[slots]
    op, rp = t.orig_p[slots], t.resp_p[slots]
    first, last = t.first_ts[slots], t.last_ts[slots]
    tunnel_parents: Any = empty_lists(k)
    if t.has_parents[slots].any():
        parents = t.parents
        empty: list[str] = []  # shared by rows without tunnels, never mutated
        tunnel_parents = [sorted(p) if (p := parents[s]) else empty for s in slots.tolist()]
    return {
        "ts": first,
        "uid": t.uids.arrow(slots),
        "orig_h": addr_array(orig_h),
        "orig_p": op,
        "resp_h": addr_array(resp_h),
        "resp_p": rp,
        "proto": proto_names(proto),
        "ip_proto": proto,
        "duration_ns": last - first,
        "orig_bytes": ob,
        "resp_bytes": rb,
        "conn_state": _state_texts().take(state),
        "missed_bytes": missed,
        "history": arrow_text(hoff, hdata, k),
        "orig_pkts": pk[:, 0].copy(),
        "orig_ip_bytes": t.ipb[slots, 0],
        "resp_pkts": pk[:, 1].copy(),
        "resp_ip_bytes": t.ipb[slots, 1],
        "community_id": community_id_array(orig_h, resp_h, proto, op, rp),
        "tunnel_parents": tunnel_parents,
        "vlan": _vlan_array(t.vlan[slots]),
        "inner_vlan": _vlan_array(t.inner_vlan[slots]),
        "slot": slots.copy(),
    }


def pylist(col: Any) -> list[Any]:
    """A column (list, numpy array or Arrow array) as a list of Python values."""
    import pyarrow as pa

    if isinstance(col, np.ndarray | pa.Array | pa.ChunkedArray):
        return list(col.tolist() if isinstance(col, np.ndarray) else col.to_pylist())
    return list(col)


def concat_column(parts: list[Any]) -> Any:
    """One column from several chunks of the same kind (numpy, Arrow or list)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import pyarrow as pa

    arrow = next((p for p in parts if isinstance(p, pa.Array)), None)
    if arrow is not None:  # lists among Arrow chunks (e.g. refs of a block with subjects)
        t = arrow.type
        return pa.concat_arrays([p if isinstance(p, pa.Array) else pa.array(p, t) for p in parts])
    return [v for p in parts for v in p]


def concat(chunks: list[Columns]) -> Columns:
    """One set of columns from several."""
    if not chunks:
        return {}
    return {k: concat_column([c[k] for c in chunks]) for k in chunks[0]}


def count(cols: Columns) -> int:
    return len(cols["uid"]) if cols else 0


def to_rows(chunks: list[Columns] | Columns) -> list[dict[str, Any]]:
    """Row dicts from columns (tests, small tools)."""
    cols = concat(chunks) if isinstance(chunks, list) else chunks
    if not cols:
        return []
    keys = list(cols)
    values = [pylist(v) for v in cols.values()]
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*values, strict=True)]

"""Turn ended flows of a `FlowTable` into `flow` columns with Zeek conn.log fields.

Columns, not row dicts: TCP sizes, states and histories of all ended flows come from one C
call, counters are array slices, and only address text and Community IDs are per flow.
Field names follow conn.log (`id.orig_h` becomes `orig_h`); times are ns since the epoch.
`to_rows` turns columns into row dicts (tests, small tools).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from capture import tcpstate
from capture.flowkeys import PROTO_NAMES, community_ids

if TYPE_CHECKING:
    from capture.flows import FlowTable

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


def rows_for(t: FlowTable, slots: npt.NDArray[np.int64]) -> Columns:
    """Columns for the flows in `slots` (their current state)."""
    k = slots.size
    proto = t.proto[slots]
    pk = t.pkts[slots]
    pb = t.pbytes[slots]
    ob, rb = pb[:, 0].copy(), pb[:, 1].copy()
    state = np.full(k, "OTH", dtype=object)
    history = np.full(k, "", dtype=object)
    missed = np.zeros(k, np.int64)
    tcp = np.flatnonzero(proto == 6)
    if tcp.size:
        ffi, lib = tcpstate.ffi, tcpstate.lib
        ts = np.ascontiguousarray(slots[tcp], np.int64)
        osz = np.zeros(tcp.size, np.int64)
        rsz = np.zeros(tcp.size, np.int64)
        st = np.zeros(tcp.size, np.int32)
        hist = np.zeros(tcp.size * HIST_MAX, np.uint8)
        hl = np.zeros(tcp.size, np.int32)
        fb = ffi.from_buffer
        lib.tcp_summary(
            t.tcp,
            tcp.size,
            fb("int64_t[]", ts),
            fb("int64_t[]", osz),
            fb("int64_t[]", rsz),
            fb("int32_t[]", st),
            fb("char[]", hist),
            fb("int32_t[]", hl),
        )
        # bytes the sequence space says were sent but no packet carried (capture loss)
        missed[tcp] = np.maximum(osz - pb[tcp, 0], 0) + np.maximum(rsz - pb[tcp, 1], 0)
        ob[tcp], rb[tcp] = osz, rsz
        names = np.asarray(tcpstate.CONN_STATES, dtype=object)
        state[tcp] = names[st]
        hb = hist.tobytes()
        history[tcp] = [
            hb[i * HIST_MAX : i * HIST_MAX + n].decode("ascii") for i, n in enumerate(hl.tolist())
        ]
    udp = np.flatnonzero(proto == 17)
    if udp.size:
        o, r = pk[udp, 0] > 0, pk[udp, 1] > 0
        state[udp] = np.where(o, np.where(r, "SF", "S0"), np.where(r, "SHR", "OTH"))
        flip = t.flipped[slots[udp]]
        resp_first = t.first_dir[slots[udp]] == 1
        letters = []
        for f, rf, oo, rr in zip(
            flip.tolist(), resp_first.tolist(), o.tolist(), r.tolist(), strict=True
        ):
            h = "^" if f else ""
            parts = (
                ("d" if rr else "", "D" if oo else "")
                if rf
                else ("D" if oo else "", "d" if rr else "")
            )
            letters.append(h + parts[0] + parts[1])
        history[udp] = letters
    other = np.flatnonzero((proto != 6) & (proto != 17) & t.flipped[slots])
    history[other] = "^"
    orig_h, resp_h = t.orig_h[slots], t.resp_h[slots]
    op, rp = t.orig_p[slots], t.resp_p[slots]
    first, last = t.first_ts[slots], t.last_ts[slots]
    pnames = [PROTO_NAMES.get(p, "unknown_transport") for p in proto.tolist()]
    return {
        "ts": first.tolist(),
        "uid": [t.uids[s] for s in slots.tolist()],
        "orig_h": addr_texts(orig_h),
        "orig_p": op.tolist(),
        "resp_h": addr_texts(resp_h),
        "resp_p": rp.tolist(),
        "proto": pnames,
        "ip_proto": proto.tolist(),
        "duration_ns": (last - first).tolist(),
        "orig_bytes": ob.tolist(),
        "resp_bytes": rb.tolist(),
        "conn_state": state.tolist(),
        "missed_bytes": missed.tolist(),
        "history": history.tolist(),
        "orig_pkts": pk[:, 0].tolist(),
        "orig_ip_bytes": t.ipb[slots, 0].tolist(),
        "resp_pkts": pk[:, 1].tolist(),
        "resp_ip_bytes": t.ipb[slots, 1].tolist(),
        "community_id": community_ids(orig_h, resp_h, proto, op, rp),
        "tunnel_parents": [sorted(t.parents[s] or ()) for s in slots.tolist()],
        "slot": slots.tolist(),
    }


def concat(chunks: list[Columns]) -> Columns:
    """One set of columns from several."""
    if not chunks:
        return {}
    if len(chunks) == 1:
        return chunks[0]
    return {k: [v for c in chunks for v in c[k]] for k in chunks[0]}


def count(cols: Columns) -> int:
    return len(cols["uid"]) if cols else 0


def to_rows(chunks: list[Columns] | Columns) -> list[dict[str, Any]]:
    """Row dicts from columns (tests, small tools)."""
    cols = concat(chunks) if isinstance(chunks, list) else chunks
    if not cols:
        return []
    keys = list(cols)
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]

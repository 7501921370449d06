"""Per-packet columns the flow table works on: the decoded packets of a batch plus one row per
tunnelled packet for its outer connection and, for nested tunnels, its middle connection (Zeek
logs tunnels as connections too), with ICMP "ports" mapped to Zeek's type/counterpart
convention and SCTP keyed without ports (Zeek's unknown_transport)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from capture.batch import PacketBatch
from capture.flow.keys import canonical_hash, group_keys, icmp_counterpart

I64 = npt.NDArray[np.int64]


@dataclass
class Cols:
    ts: I64
    proto: npt.NDArray[np.uint8]
    src: npt.NDArray[np.uint8]
    dst: npt.NDArray[np.uint8]
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    ip_len: I64
    plen: I64
    flags: npt.NDArray[np.uint8]
    seq: npt.NDArray[np.uint32]
    ack: npt.NDArray[np.uint32]
    count: npt.NDArray[np.bool_]  # counts as a packet (not a later fragment)
    vlan: npt.NDArray[np.int32]  # outer 802.1Q VLAN of the frame, -1 if none
    inner_vlan: npt.NDArray[np.int32]  # QinQ inner VLAN, -1 if none
    pkt: I64  # batch index, -1 for tunnel (outer) rows
    bpkt: I64  # batch index of the packet the row comes from (outer rows too)

    def take(self, sl: slice | I64) -> Cols:
        return Cols(**{k: getattr(self, k)[sl] for k in self.__dataclass_fields__})


def columns(b: PacketBatch) -> Cols:
    """Inner decoded packets plus, per tunnelled packet, one row for its outer connection and
    (nested tunnels) one for the middle connection, in that order before the inner row."""
    okm = (b.status == 0) & (b.proto != 59)  # 59: IPv6 "no next header"
    ok = np.flatnonzero(okm)
    tun = np.flatnonzero((b.tunnel != 0) & (b.outer_proto != 0))
    # every packet decoded (the usual case): the columns are views, not copies
    inner = _inner(b, slice(None) if ok.size == okm.size else ok, ok)
    if tun.size == 0:
        return inner
    o = (b.outer_proto[tun], b.outer_src[tun], b.outer_dst[tun])
    parts = [_tunnel(b, tun, *o, b.outer_sport[tun], b.outer_dport[tun], b.outer_ip_len[tun])]
    keys = [tun * 3]
    m = b.middle
    if m is not None and m.rows.size:
        parts.append(_tunnel(b, m.rows, m.proto, m.src, m.dst, m.sport, m.dport, m.ip_len))
        keys.append(m.rows * 3 + 1)
    parts.append(inner)
    keys.append(ok * 3 + 2)
    # outer row, then middle row, then inner row of the same packet
    order = np.argsort(np.concatenate(keys), kind="stable")
    both = {
        k: np.concatenate([getattr(c, k) for c in parts])[order] for k in Cols.__dataclass_fields__
    }
    return Cols(**both)


@dataclass(frozen=True, slots=True)
class BatchKeys:
    """What the flow table derives from a batch before it needs its state: the columns, each
    row's flow key and their grouping (`group_keys`). Made by `keys_of` on any thread: replay
    makes it on the reader's thread, beside the flow table of the batch before."""

    cols: Cols
    h: npt.NDArray[np.uint64]
    groups: tuple[npt.NDArray[np.uint64], I64, I64]

    @property
    def first_ts(self) -> int | None:
        """`first_ts(batch)`."""
        return int(self.cols.ts[0]) if self.cols.ts.size else None


def keys_of(b: PacketBatch) -> BatchKeys:
    """The batch's `BatchKeys` (pure: no flow state)."""
    c = columns(b)
    h = canonical_hash(c.src, c.dst, c.sport, c.dport, c.proto)
    return BatchKeys(c, h, group_keys(h))


def first_ts(b: PacketBatch) -> int | None:
    """`columns(b).ts[0]` without building the columns (None when there are no rows)."""
    rows = ((b.status == 0) & (b.proto != 59)) | ((b.tunnel != 0) & (b.outer_proto != 0))
    first = int(np.argmax(rows)) if rows.size else 0
    m = b.middle
    if m is not None and m.rows.size:
        first = min(first if rows.size and rows[first] else len(rows), int(m.rows.min()))
        return int(b.ts_ns[first])
    return int(b.ts_ns[first]) if rows.size and rows[first] else None


def _tunnel(
    b: PacketBatch,
    rows: I64,
    proto: npt.NDArray[np.uint8],
    src: npt.NDArray[np.uint8],
    dst: npt.NDArray[np.uint8],
    sport: npt.NDArray[np.uint16],
    dport: npt.NDArray[np.uint16],
    ip_len: npt.NDArray[np.int32],
) -> Cols:
    """Rows for the tunnel connections carrying packets `rows` (payload: IP length less the
    IP header and, for UDP, the UDP header)."""
    k = rows.size
    oip = ip_len.astype(np.int64)
    v4 = (src[:, 10] == 0xFF) & (src[:, :10].sum(axis=1) == 0)
    hdr = np.where(v4, 20, 40) + np.where(proto == 17, 8, 0)
    return Cols(
        ts=b.ts_ns[rows],
        proto=proto,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        ip_len=oip,
        plen=np.maximum(oip - hdr, 0),
        flags=np.zeros(k, np.uint8),
        seq=np.zeros(k, np.uint32),
        ack=np.zeros(k, np.uint32),
        count=np.ones(k, bool),
        vlan=b.vlan[rows],
        inner_vlan=b.inner_vlan[rows],
        pkt=np.full(k, -1, np.int64),
        bpkt=rows.astype(np.int64),
    )


def _inner(b: PacketBatch, sel: slice | I64, ok: I64) -> Cols:
    """Rows of the decoded packets `ok` (selected by `sel`: `ok` itself or all rows). Only
    sport/dport are copied (ICMP rewrites dport); the other columns may share the batch's."""
    proto = b.proto[sel]
    sport = b.sport[sel].copy()
    dport = b.dport[sel].copy()
    icmp = (proto == 1) | (proto == 58)
    if icmp.any():
        dport[icmp] = icmp_counterpart(proto[icmp], sport[icmp], dport[icmp])
    sctp = proto == 132  # Zeek has no SCTP analyzer: unknown_transport, keyed without ports
    if sctp.any():
        sport[sctp] = 0
        dport[sctp] = 0
    pkt = ok.astype(np.int64)
    return Cols(
        ts=b.ts_ns[sel],
        proto=proto,
        src=b.src[sel],
        dst=b.dst[sel],
        sport=sport,
        dport=dport,
        ip_len=b.ip_len[sel].astype(np.int64),
        plen=b.payload_len[sel].astype(np.int64),
        flags=b.tcp_flags[sel],
        seq=b.tcp_seq[sel],
        ack=b.tcp_ack[sel],
        count=(b.frag[sel] <= 1),
        vlan=b.vlan[sel],
        inner_vlan=b.inner_vlan[sel],
        pkt=pkt,
        bpkt=pkt.copy(),
    )


def r_is_reuse(c: Cols, i: int) -> bool:
    """Whether row i is a pure SYN (a stop there is TCP port reuse rather than idleness)."""
    return bool(c.proto[i] == 6 and (c.flags[i] & 0x12) == 0x02)


def swap(c: Cols, a: int, b: int) -> npt.NDArray[np.bool_]:
    return swapped(c.src[a:b], c.dst[a:b], c.sport[a:b], c.dport[a:b])


def swapped(
    src: npt.NDArray[np.uint8],
    dst: npt.NDArray[np.uint8],
    sp: npt.NDArray[np.uint16],
    dp: npt.NDArray[np.uint16],
) -> npt.NDArray[np.bool_]:
    """Whether the sender is the higher endpoint (address, then port) of each packet."""
    s = np.ascontiguousarray(src).view(">u8")
    d = np.ascontiguousarray(dst).view(">u8")
    return np.asarray(
        (s[:, 0] > d[:, 0])
        | ((s[:, 0] == d[:, 0]) & ((s[:, 1] > d[:, 1]) | ((s[:, 1] == d[:, 1]) & (sp > dp))))
    )

"""Batch decoder: RawBatch -> PacketBatch with numpy over whole batches, not per packet.

The common case (Ethernet with up to two VLAN tags or raw IP; IPv4 not fragmented, IPv6
without extension headers; TCP, UDP, ICMP, SCTP or another protocol that is not a tunnel;
every header complete) is decoded first in one C pass (`capture.read.walk.decode_common`,
which releases the GIL); the packets it leaves go through the numpy steps below, which give
every packet the same columns (tests/capture/test_capture_fastdecode.py checks that).

Steps, each one array expression over all packets it applies to:
1. link layer (`capture.decode.linktypes`): offset of the IP header per frame;
2. IPv4/IPv6 with fixed offsets per version (`capture.decode.ip`); IPv6 extension headers
   (hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6) are walked
   a step at a time over only the packets that still have one;
3. transport (TCP, UDP, ICMP/ICMPv6 type/code as ports, SCTP; others with ports 0);
4. fragments (`capture.decode.frag`): later fragments get the ports of their first fragment;
5. tunnels (`capture.decode.tunnels`): Teredo, VXLAN, Geneve, GRE/ERSPAN, IP-in-IP are
   decapsulated and the inner packet decoded by steps 1-4 again, two levels deep as Zeek's
   `Tunnel::max_depth`; `PacketBatch.middle` keeps the connection between nested tunnels.

A `Decoder` keeps the fragment table and counters across batches of one capture; use one
per capture (`read_batches` does). Nothing raises for bad packets: each gets a status code
(`capture.batch.STATUS`), counted in `Decoder.summary`. All reads are bounds-checked against
the frame's captured end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from capture.batch import FRAG, STATUS, STATUS_NAME, TUNNEL_NAME, PacketBatch, RawBatch
from capture.decode.frag import FragTable
from capture.decode.ip import ipv4, ipv6
from capture.decode.linktypes import be16, be32, ethernet, link_layer
from capture.decode.tunnels import detect
from capture.read import open_capture
from capture.read.walk import decode_common
from capture.tunnelchain import save_middle

I64 = npt.NDArray[np.int64]
U8A = npt.NDArray[np.uint8]
Rows = npt.NDArray[np.intp]

ST_TRUNC = STATUS["truncated"]
ST_BAD_VER = STATUS["bad_ip_version"]
ST_BAD_L4 = STATUS["bad_transport_header"]
ST_BAD_REC = STATUS["bad_record"]

MIN_BUF = 256  # tiny buffers are padded so that guarded gathers at offset 0 stay in range
MAX_DEPTH = 2  # tunnel levels decapsulated: Zeek's Tunnel::max_depth default


class Decoder:
    """Decodes RawBatches of one capture; keeps fragment state and counters."""

    def __init__(self, max_fragments: int = 65536) -> None:
        self.frags = FragTable(max_fragments)
        self._status = np.zeros(256, dtype=np.int64)
        self._tunnels: dict[str, int] = {}
        self.records: dict[str, int] = {}  # reader counters (read_batches merges them in)
        self.packets = 0
        self.fast = True  # the C pass for the common case (False: numpy for every packet)

    @property
    def summary(self) -> dict[str, int]:
        """Counts of undecoded packets by status name, tunnels and fragment handling."""
        out: dict[str, int] = {}
        for code in np.nonzero(self._status)[0].tolist():
            if code:
                out[STATUS_NAME.get(code, f"status_{code}")] = int(self._status[code])
        for k, v in self._tunnels.items():
            out[f"tunnel_{k}"] = v
        out.update(self.frags.counters)
        for k, v in self.records.items():
            out[k] = out.get(k, 0) + v
        return out

    def decode(self, raw: RawBatch) -> PacketBatch:
        """Decode one batch (never raises for packet content). The common case goes through
        one C pass (`fastpath.decode_common`), the other packets through the numpy steps."""
        # the columns the C pass writes for every packet it decodes are not zeroed first: the
        # packets it leaves to numpy get their defaults here (`reset_rows`) before numpy runs
        out = PacketBatch.empty_for(raw, filled=not self.fast)
        n = len(raw)
        if n == 0:
            return out
        buf = raw.buf
        if buf.shape[0] < MIN_BUF:
            buf = np.concatenate([buf, np.zeros(MIN_BUF, dtype=np.uint8)])
            out.buf = buf
        slow = decode_common(buf, raw.buf.shape[0], raw, out) if self.fast else None
        if slow is None:
            if self.fast:  # no C pass (not built here): numpy for every packet
                out.reset_rows(slice(None))
            self._numpy(buf, raw, out, slice(None))
        elif slow.shape[0]:
            out.reset_rows(slow)
            self._numpy(buf, raw, out, slow)
        self.packets += n
        self._status += np.bincount(out.status, minlength=256)
        return out

    def _numpy(self, buf: U8A, raw: RawBatch, out: PacketBatch, sel: Rows | slice) -> None:
        """The numpy steps for the packets `sel` of `raw` (sorted indices, or all)."""
        start = raw.frame_off[sel].astype(np.int64)
        end = start + raw.cap_len[sel].astype(np.int64)
        bad = (raw.cap_len[sel] < 0) | (start < 0) | (end > raw.buf.shape[0])
        if bad.any():
            start, end = np.where(bad, 0, start), np.where(bad, 0, end)
        l3, hint, vlan, inner_vlan, st = link_layer(buf, raw.linktype[sel], start, end)
        out.vlan[sel] = vlan
        out.inner_vlan[sel] = inner_vlan
        st[bad] = ST_BAD_REC
        out.status[sel] = st
        l3[bad] = -1
        local = np.nonzero(l3 >= 0)[0]
        rows = local if isinstance(sel, slice) else sel[local]
        self._ip(buf, out, rows, l3[local], end[local], hint[local], 0)

    # --- network layer -------------------------------------------------------------------
    def _ip(
        self,
        buf: U8A,
        out: PacketBatch,
        rows: Rows,
        l3: I64,
        end: I64,
        hint: npt.NDArray[np.uint8],
        depth: int,
    ) -> None:
        m = rows.shape[0]
        if m == 0:
            return
        st = np.zeros(m, dtype=np.uint8)
        has = l3 < end
        st[~has] = ST_TRUNC
        ver = np.where(has, buf[np.where(has, l3, 0)] >> 4, 0)
        badv = has & ((ver != 4) & (ver != 6) | ((hint != 0) & (ver != hint)))
        st[badv] = ST_BAD_VER
        proto = np.zeros(m, dtype=np.int64)
        l4 = np.zeros(m, dtype=np.int64)
        ip_len = np.zeros(m, dtype=np.int64)
        mf = np.zeros(m, dtype=bool)
        foff = np.zeros(m, dtype=np.int64)
        fid = np.zeros(m, dtype=np.int64)
        isfrag = np.zeros(m, dtype=bool)
        src = np.zeros((m, 16), dtype=np.uint8)
        dst = np.zeros((m, 16), dtype=np.uint8)
        for version, fn in ((4, ipv4), (6, ipv6)):
            idx = np.nonzero((st == 0) & (ver == version))[0]
            if idx.shape[0] == 0:
                continue
            sel = _all_or(idx, m)
            res = fn(buf, l3[sel], end[sel])
            st[sel], proto[sel], l4[sel], ip_len[sel] = res[0], res[1], res[2], res[3]
            mf[sel], foff[sel], fid[sel], isfrag[sel] = res[4], res[5], res[6], res[7]
            src[sel], dst[sel] = res[8], res[9]
        ok = st == 0
        ip_end = l3 + ip_len
        cend = np.minimum(end, ip_end)
        frag = np.where(
            isfrag,
            np.where(foff == 0, FRAG["first"], np.where(mf, FRAG["middle"], FRAG["last"])),
            FRAG["none"],
        ).astype(np.uint8)
        frag[~ok] = 0
        rsel = _all_or(rows, len(out))
        out.ip_version[rsel] = np.where(ok, ver, 0)
        out.proto[rsel] = proto
        out.src[rsel] = src
        out.dst[rsel] = dst
        out.ip_len[rsel] = ip_len
        out.l3_off[rsel] = l3
        out.frag[rsel] = frag
        # transport: first fragments and unfragmented packets
        t = np.nonzero(ok & (frag <= FRAG["first"]))[0]
        ts = _all_or(t, m)
        tst, sport, dport, poff, plen = _transport(
            buf, out, rows[t], _all_or(rows[t], len(out)), proto[ts], l4[ts], ip_end[ts], cend[ts]
        )
        st[ts] = tst
        # later fragments: payload is fragment data, ports come from the fragment table
        later = np.nonzero(ok & (frag >= FRAG["middle"]))[0]
        if later.shape[0]:
            r = rows[later]
            out.payload_off[r] = np.minimum(l4[later], cend[later])
            out.payload_len[r] = np.maximum(ip_end[later] - l4[later], 0)
            out.payload_cap[r] = np.maximum(cend[later] - l4[later], 0)
        out.status[rsel] = st
        fr = np.nonzero(frag != 0)[0]
        if fr.shape[0]:
            self.frags.attribute(out, rows[fr], fid[fr])
        if depth >= MAX_DEPTH or t.shape[0] == 0:
            return
        idx, kind, inner, eth, ihint = detect(
            buf, proto[ts], sport, dport, l4[ts], poff, poff + plen, cend[ts]
        )
        keep = tst[idx] == 0
        # one tunnel per packet (first detector wins), rows in batch order (_all_or needs it)
        keep = np.nonzero(keep)[0]
        keep = keep[np.unique(idx[keep], return_index=True)[1]]
        idx, kind, inner, eth, ihint = idx[keep], kind[keep], inner[keep], eth[keep], ihint[keep]
        if idx.shape[0] == 0:
            return
        tr = rows[t[idx]]
        iend = cend[t[idx]]
        for k in np.unique(kind).tolist():
            name = TUNNEL_NAME.get(int(k), str(k))
            self._tunnels[name] = self._tunnels.get(name, 0) + int(np.count_nonzero(kind == k))
        outermost = out.tunnel[tr] == 0  # nested tunnels: keep the outermost connection
        _save_outer(out, tr[outermost])
        out.tunnel[tr[outermost]] = kind[outermost]
        if not outermost.all():  # and the one between the two tunnels (tunnel_parents chain)
            save_middle(out, tr[~outermost])
        il3 = inner.copy()
        if eth.any():
            e = np.nonzero(eth)[0]
            a, h, _, _, est = ethernet(buf, inner[e], iend[e])
            il3[e] = a
            ihint[e] = h
            bad = est != 0
            out.status[tr[e[bad]]] = est[bad]
            out.ip_version[tr[e[bad]]] = 0
        go = il3 >= 0
        self._ip(buf, out, tr[go], il3[go], iend[go], ihint[go], depth + 1)


def _all_or(idx: Rows, n: int) -> Rows | slice:
    """`idx` (sorted unique indices from np.nonzero) as a slice when it selects all n."""
    return slice(None) if idx.shape[0] == n else idx


def _save_outer(out: PacketBatch, tr: Rows) -> None:
    out.outer_proto[tr] = out.proto[tr]
    out.outer_src[tr] = out.src[tr]
    out.outer_dst[tr] = out.dst[tr]
    out.outer_sport[tr] = out.sport[tr]
    out.outer_dport[tr] = out.dport[tr]
    out.outer_ip_len[tr] = out.ip_len[tr]


def _transport(
    buf: U8A,
    out: PacketBatch,
    r: Rows,
    rsel: Rows | slice,
    proto: I64,
    l4: I64,
    ip_end: I64,
    cend: I64,
) -> tuple[U8A, I64, I64, I64, I64]:
    """Transport fields for rows r (rsel: the same rows, or a slice when that is all rows).

    Returns (status, sport, dport, payload offset, payload length).
    """
    k = r.shape[0]
    st = np.zeros(k, dtype=np.uint8)
    need = np.select(
        [proto == 6, proto == 17, (proto == 1) | (proto == 58), proto == 132], [20, 8, 4, 12], 0
    )
    ok = l4 + need <= cend
    st[~ok] = ST_TRUNC
    ports = ok & (need > 0)
    o = np.where(ports, l4, 0)
    sport = np.where(ports, be16(buf, o), 0)
    dport = np.where(ports, be16(buf, o + 2), 0)
    icmp = ok & ((proto == 1) | (proto == 58))
    sport = np.where(icmp, buf[o], sport)
    dport = np.where(icmp, buf[o + 1], dport)
    hlen = np.select([proto == 17, proto == 132, (proto == 1) | (proto == 58)], [8, 12, 8], 0)
    tcp = np.nonzero(ok & (proto == 6))[0]
    if tcp.shape[0]:
        ot = o[tcp]
        doff = (buf[ot + 12] >> 4).astype(np.int64) * 4
        hlen[tcp] = doff
        badt = doff < 20
        st[tcp[badt]] = ST_BAD_L4
        out.tcp_flags[r[tcp]] = buf[ot + 13]
        out.tcp_seq[r[tcp]] = be32(buf, ot + 4)
        out.tcp_ack[r[tcp]] = be32(buf, ot + 8)
    poff = l4 + hlen
    plen = ip_end - poff
    neg = ok & (plen < 0) & (proto != 1) & (proto != 58)
    st[neg & (st == 0)] = ST_BAD_L4
    plen = np.maximum(plen, 0)
    out.sport[rsel] = sport
    out.dport[rsel] = dport
    out.payload_off[rsel] = np.minimum(poff, np.maximum(cend, l4))  # never past the capture
    out.payload_len[rsel] = plen
    out.payload_cap[rsel] = np.clip(cend - poff, 0, plen)
    return st, sport, dport, poff, plen


def decode(raw: RawBatch, decoder: Decoder | None = None) -> PacketBatch:
    """Decode one batch. Without a decoder, fragments are attributed only within it."""
    return (decoder or Decoder()).decode(raw)


def read_batches(
    path: str | Path, max_packets: int = 65536, decoder: Decoder | None = None
) -> Iterator[PacketBatch]:
    """Read and decode a capture file batch by batch (raises CaptureError for a bad header).

    Pass a `Decoder` to read its `summary` afterwards: decode counters plus the reader's
    record-level counters (truncated_record, bad_record, bad_timestamp, ...).
    """
    dec = decoder or Decoder()
    reader = open_capture(path)
    try:
        for raw in reader.batches(max_packets):
            yield dec.decode(raw)
    finally:
        for k, v in reader.summary.items():
            dec.records[k] = dec.records.get(k, 0) + v

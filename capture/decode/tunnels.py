"""Tunnel detection, vectorised: where does the inner packet of a tunnelled packet start?

Given decoded outer packets (transport fields of a subset of a batch), `detect` finds the
tunnels Zeek decapsulates by default and returns, for each tunnelled packet, the offset of
the inner frame and whether it is Ethernet (VXLAN, Geneve with Ethernet payload, GRE
transparent bridging, ERSPAN) or IP (Teredo, Geneve/GRE with IP payload, IP-in-IP, PPTP's
enhanced GRE carrying PPP). The decoder then decodes the inner frame with the same code.

- VXLAN: UDP dport 4789, I flag set, 8-byte header, inner Ethernet.
- Geneve: UDP dport 6081, version 0, 8 bytes + options, protocol 0x6558/0x0800/0x86DD.
- Teredo: UDP port 3544 either side, optional authentication and origin-indication
  headers, then an IPv6 header whose payload length fits the UDP payload exactly.
- GRE (IP proto 47): version 0 with checksum/key/sequence fields, protocol IPv4, IPv6,
  transparent Ethernet bridging 0x6558, ERSPAN type II 0x88BE and III 0x22EB; version 1
  (PPTP) with PPP carrying IPv4/IPv6.
- IP-in-IP: IP proto 4 (IPv4) and 41 (IPv6, 6in4).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from capture.batch import TUNNEL
from capture.decode.linktypes import be16

I64 = npt.NDArray[np.int64]
U8A = npt.NDArray[np.uint8]

VXLAN_PORT, GENEVE_PORT, TEREDO_PORT = 4789, 6081, 3544


class Found:
    """Tunnelled packets among the candidates (indices into the candidate arrays)."""

    def __init__(self) -> None:
        self.idx: list[I64] = []
        self.kind: list[npt.NDArray[np.uint8]] = []
        self.inner: list[I64] = []
        self.eth: list[npt.NDArray[np.bool_]] = []
        self.hint: list[npt.NDArray[np.uint8]] = []

    def add(
        self,
        idx: I64,
        kind: int,
        inner: I64,
        eth: npt.NDArray[np.bool_],
        hint: npt.NDArray[np.uint8],
    ) -> None:
        if idx.shape[0]:
            self.idx.append(idx)
            self.kind.append(np.full(idx.shape[0], kind, dtype=np.uint8))
            self.inner.append(inner)
            self.eth.append(eth)
            self.hint.append(hint)

    def arrays(
        self,
    ) -> tuple[I64, npt.NDArray[np.uint8], I64, npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
        if not self.idx:
            z = np.zeros(0, dtype=np.int64)
            return z, z.astype(np.uint8), z, z.astype(bool), z.astype(np.uint8)
        return (
            np.concatenate(self.idx),
            np.concatenate(self.kind),
            np.concatenate(self.inner),
            np.concatenate(self.eth),
            np.concatenate(self.hint),
        )


def _ptype_hint(
    pt: I64,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Ethertype-style protocol -> (is ethernet, ip hint, supported)."""
    eth = pt == 0x6558
    hint = np.where(pt == 0x0800, 4, np.where(pt == 0x86DD, 6, 0)).astype(np.uint8)
    return eth, hint, eth | (hint > 0)


def detect(
    buf: U8A, proto: I64, sport: I64, dport: I64, l4: I64, poff: I64, pend: I64, cend: I64
) -> tuple[I64, npt.NDArray[np.uint8], I64, npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
    """Find tunnels among decoded packets.

    proto/sport/dport: outer transport; l4: transport header offset; poff: payload offset;
    pend: payload end by header lengths; cend: captured end of the outer datagram.
    Returns (index into inputs, tunnel kind, inner offset, inner is Ethernet, IP hint).
    """
    f = Found()
    udp = proto == 17
    # VXLAN
    m = np.nonzero(udp & (dport == VXLAN_PORT) & (poff + 8 + 14 <= cend))[0]
    if m.shape[0]:
        ok = (buf[poff[m]] & 0x08) != 0
        m = m[ok]
        f.add(
            m,
            TUNNEL["vxlan"],
            poff[m] + 8,
            np.ones(m.shape[0], bool),
            np.zeros(m.shape[0], np.uint8),
        )
    # Geneve
    m = np.nonzero(udp & (dport == GENEVE_PORT) & (poff + 8 <= cend))[0]
    if m.shape[0]:
        p = poff[m]
        ver_ok = (buf[p] >> 6) == 0
        inner = p + 8 + (buf[p] & 0x3F).astype(np.int64) * 4
        eth, hint, sup = _ptype_hint(be16(buf, p + 2))
        ok = ver_ok & sup & (inner < cend[m])
        f.add(m[ok], TUNNEL["geneve"], inner[ok], eth[ok], hint[ok])
    # Teredo: port 3544, or (like Zeek's DPD signature) any UDP payload that is an IPv6
    # packet of exactly the payload's length with a Teredo (2001:0::/32) address
    big = udp & (poff + 40 <= cend)
    on_port = big & ((dport == TEREDO_PORT) | (sport == TEREDO_PORT))
    first = np.zeros(proto.shape[0], dtype=np.int64)
    first[big] = buf[poff[big]]
    m = np.nonzero(on_port | (big & ((first >> 4 == 6) | (first == 0))))[0]
    if m.shape[0]:
        p = poff[m].copy()
        ce = cend[m]
        auth = be16(buf, p) == 0x0001
        if auth.any():
            q = p[auth]
            p[auth] = q + 13 + buf[q + 2].astype(np.int64) + buf[q + 3]
        room = p + 2 <= ce
        origin = room & (be16(buf, np.where(room, p, 0)) == 0x0000)
        p = np.where(origin, p + 8, p)
        room = p + 40 <= ce
        sp = np.where(room, p, 0)
        ok = room & ((buf[sp] >> 4) == 6) & (40 + be16(buf, sp + 4) == pend[m] - p)
        teredo_addr = np.zeros(m.shape[0], dtype=bool)
        for a in (8, 24):
            pre = (be16(buf, sp + a) == 0x2001) & (be16(buf, sp + a + 2) == 0)
            teredo_addr |= pre
        ok &= on_port[m] | teredo_addr
        k = int(ok.sum())
        f.add(m[ok], TUNNEL["teredo"], p[ok], np.zeros(k, bool), np.full(k, 6, np.uint8))
    # GRE
    m = np.nonzero((proto == 47) & (l4 + 4 <= cend))[0]
    if m.shape[0]:
        g = l4[m]
        flags = be16(buf, g)
        pt = be16(buf, g + 2)
        ver = flags & 7
        c_or_r = (flags & 0xC000) != 0
        hdr = 4 + 4 * c_or_r + 4 * ((flags & 0x2000) != 0) + 4 * ((flags & 0x1000) != 0)
        v1 = ver == 1  # PPTP: key always present, optional ack
        hdr = np.where(v1, 8 + 4 * ((flags & 0x1000) != 0) + 4 * ((flags & 0x0080) != 0), hdr)
        routing = (flags & 0x4000) != 0
        p = g + hdr
        eth, hint, sup = _ptype_hint(pt)
        erspan2 = (pt == 0x88BE) & ((flags & 0x1000) != 0)
        erspan3 = pt == 0x22EB
        p = np.where(erspan2, p + 8, np.where(erspan3, p + 12, p))
        eth = eth | erspan2 | erspan3
        # PPTP: PPP with optional address/control bytes, protocol 0x0021/0x0057
        ppp = v1 & (pt == 0x880B) & (p + 4 <= cend[m])
        if ppp.any():
            sp = np.where(ppp, p, 0)
            skip = (buf[sp] == 0xFF) & (buf[sp + 1] == 0x03)
            pp = np.where(skip, sp + 2, sp)
            pproto = be16(buf, pp)
            hint = np.where(
                ppp & (pproto == 0x21), 4, np.where(ppp & (pproto == 0x57), 6, hint)
            ).astype(np.uint8)
            p = np.where(ppp, pp + 2, p)
        good_ver = (ver == 0) | (v1 & ppp)
        ok = good_ver & ~routing & (eth | (hint > 0)) & (p < cend[m])
        kind = np.where(erspan2 | erspan3, TUNNEL["erspan"], TUNNEL["gre"]).astype(np.uint8)
        for k in (TUNNEL["gre"], TUNNEL["erspan"]):
            sel = ok & (kind == k)
            f.add(m[sel], k, p[sel], eth[sel], hint[sel])
    # IP in IP
    m = np.nonzero(((proto == 4) | (proto == 41)) & (l4 < cend))[0]
    if m.shape[0]:
        hint = np.where(proto[m] == 4, 4, 6).astype(np.uint8)
        f.add(m, TUNNEL["ipip"], l4[m], np.zeros(m.shape[0], bool), hint)
    return f.arrays()

"""Column-oriented packet batches: the contract between reading, decoding and flows.

A `RawBatch` is what a reader (capture file or live socket) produces: the frames of up to
`max_packets` packets packed into one uint8 buffer, with per-packet timestamp, lengths,
offset and link type. `capture.decode.decoder.decode(raw)` turns it into a `PacketBatch`: the same
frames plus one numpy column per decoded header field, so consumers (flows, appmeta,
pipeline) work with array operations instead of a Python loop over packets.

Conventions:
- every column has length `n`; addresses are (n, 16) uint8, IPv4 as IPv4-mapped IPv6
  (``::ffff:a.b.c.d``), so v4 and v6 flows share one key layout;
- `status == 0` means the packet decoded to a transport 5-tuple (TCP, UDP, ICMP, ICMPv6,
  SCTP, or another IP protocol with ports 0); any other value is a `STATUS` code saying why
  not. Non-first fragments whose first fragment was seen are status 0 with the ports filled
  in from the fragment table (see `capture.decode.frag`);
- for tunnels (Teredo, VXLAN, Geneve, GRE, IP-in-IP) the columns describe the INNER packet;
  `tunnel` says which tunnel and the `outer_*` columns hold the outer connection's
  5-tuple (zeros when `tunnel == 0`), so flows can also log the tunnel itself as Zeek does;
  for packets tunnelled twice, `middle` (`capture.tunnelchain`) holds the connection between.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.tunnelchain import Middle

# Reason codes for PacketBatch.status (0 = decoded). Codes are stable: only append.
STATUS: dict[str, int] = {
    "ok": 0,
    "non_ip": 1,  # link layer fine, payload is ARP, LLDP, STP, ... (not an error)
    "truncated": 2,  # captured bytes end inside a header we need
    "bad_ip_header": 3,  # IHL < 5, total length < header, bad IPv6 ext header chain
    "bad_ip_version": 4,  # IP version nibble is neither 4 nor 6
    "fragment_later": 5,  # non-first fragment whose first fragment was never seen
    "unsupported_linktype": 6,  # link type this decoder does not know
    "bad_link_header": 7,  # link header inconsistent (e.g. bad NFLOG TLV, SLL2 length)
    "bad_transport_header": 8,  # TCP data offset < 5, UDP length < 8, ...
    "tunnel_error": 9,  # tunnel header recognised but the inner packet is unusable
    "bad_record": 10,  # record-level problem from the reader (caplen > snaplen, ...)
}
STATUS_NAME: dict[int, str] = {v: k for k, v in STATUS.items()}

# Tunnel kinds for PacketBatch.tunnel (0 = none). Stable: only append.
TUNNEL: dict[str, int] = {
    "none": 0,
    "teredo": 1,
    "vxlan": 2,
    "geneve": 3,
    "gre": 4,
    "ipip": 5,  # IPv4/IPv6 in IPv4/IPv6 (proto 4 / 41), includes 6in4
    "erspan": 6,
}
TUNNEL_NAME: dict[int, str] = {v: k for k, v in TUNNEL.items()}

# Fragment position for PacketBatch.frag. A fragmented datagram's fragments all carry the
# flow's 5-tuple (non-first ones from the fragment table); `payload_len`/`ip_len` are each
# fragment's own share, so sums over fragments give the datagram's bytes, and counting only
# frag in (0, 1) counts one packet per datagram as Zeek does after reassembly.
FRAG: dict[str, int] = {"none": 0, "first": 1, "middle": 2, "last": 3}

# Link types (LINKTYPE_* values as in pcap/pcapng headers) that the decoder understands.
LINKTYPE_NULL = 0  # BSD loopback, host byte order AF value
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback, network byte order AF value
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
DLT_RAW_12 = 12  # DLT_RAW on most BSDs/Linux as written by some tools
DLT_RAW_14 = 14  # DLT_RAW on OpenBSD

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


@dataclass
class RawBatch:
    """Undecoded frames of n packets packed into one buffer (reader/live output).

    `frame_off[i]` .. `frame_off[i] + cap_len[i]` is packet i's frame in `buf`.
    `iface` is the pcapng interface index (0 for pcap and live capture).
    """

    buf: U8
    ts_ns: I64
    cap_len: I32
    wire_len: I32
    frame_off: I64
    linktype: U16
    iface: U16

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    def frame(self, i: int) -> bytes:
        """Bytes of packet i's frame (for rare per-packet paths and archiving)."""
        off = int(self.frame_off[i])
        return self.buf[off : off + int(self.cap_len[i])].tobytes()

    @classmethod
    def from_frames(
        cls,
        frames: list[bytes],
        ts_ns: list[int] | npt.NDArray[np.int64],
        linktype: int | list[int] = LINKTYPE_ETHERNET,
        wire_len: list[int] | None = None,
    ) -> RawBatch:
        """Build a batch from a list of frames (live capture, tests)."""
        n = len(frames)
        caps = np.fromiter((len(f) for f in frames), dtype=np.int32, count=n)
        offs = np.zeros(n, dtype=np.int64)
        if n:
            offs[1:] = np.cumsum(caps[:-1], dtype=np.int64)
        buf = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
        lt = (
            np.full(n, linktype, dtype=np.uint16)
            if isinstance(linktype, int)
            else np.asarray(linktype, dtype=np.uint16)
        )
        wl = caps.copy() if wire_len is None else np.asarray(wire_len, dtype=np.int32)
        return cls(
            buf=buf,
            ts_ns=np.asarray(ts_ns, dtype=np.int64),
            cap_len=caps,
            wire_len=wl,
            frame_off=offs,
            linktype=lt,
            iface=np.zeros(n, dtype=np.uint16),
        )


# The columns the C decode pass writes for every packet it decodes: dtype, and the value an
# undecoded packet has (`PacketBatch.empty_for`, `reset_rows`). `src` and `dst` are (n, 16).
DECODED: dict[str, tuple[Any, int]] = {
    "ip_version": (np.uint8, 0), "proto": (np.uint8, 0), "src": (np.uint8, 0),
    "dst": (np.uint8, 0), "sport": (np.uint16, 0), "dport": (np.uint16, 0),
    "ip_len": (np.int32, 0), "payload_len": (np.int32, 0), "payload_off": (np.int64, 0),
    "payload_cap": (np.int32, 0), "vlan": (np.int32, -1), "l3_off": (np.int64, -1),
    "inner_vlan": (np.int32, -1),
}  # fmt: skip


def _unset(shape: int | tuple[int, int], dtype: Any) -> Any:
    """A column not yet written (the tests put a poisoned one in its place)."""
    return np.empty(shape, dtype)


@dataclass
class PacketBatch:
    """n decoded packets as numpy columns (see module docstring for conventions)."""

    buf: U8  # raw bytes the offsets point into
    ts_ns: I64  # capture timestamp, ns since epoch UTC
    cap_len: I32  # captured bytes of the frame
    wire_len: I32  # original length on the wire
    frame_off: I64  # offset of the frame in buf
    linktype: U16  # link type of the frame
    status: U8  # 0 = decoded; else a STATUS code
    ip_version: U8  # 4 or 6 (inner IP after decapsulation), 0 if none
    proto: U8  # IP protocol (6, 17, 1, 58, 132, ...)
    src: U8  # (n, 16) address, IPv4 as ::ffff:a.b.c.d
    dst: U8  # (n, 16)
    sport: U16  # ICMP/ICMPv6: type (as Zeek)
    dport: U16  # ICMP/ICMPv6: code (as Zeek)
    ip_len: I32  # IP-layer length from the IP header (Zeek ip_bytes)
    payload_len: I32  # transport payload length from header lengths (not caplen)
    tcp_flags: U8
    tcp_seq: U32
    tcp_ack: U32
    payload_off: I64  # offset of the transport payload in buf
    payload_cap: I32  # captured payload bytes available at payload_off
    vlan: I32  # outer VLAN id or -1
    tunnel: U8  # TUNNEL code, 0 none
    # Additions beyond the minimal contract (all length n):
    l3_off: I64  # offset of the (inner) IP header in buf, -1 if none
    outer_proto: U8  # outer (tunnel) connection's IP protocol, 0 when tunnel == 0
    outer_src: U8  # (n, 16)
    outer_dst: U8  # (n, 16)
    outer_sport: U16
    outer_dport: U16
    outer_ip_len: I32
    iface: U16  # pcapng interface index (0 for pcap/live)
    frag: U8  # FRAG code: 0 not a fragment, 1 first, 2 middle, 3 last fragment
    inner_vlan: I32  # second 802.1Q tag (QinQ) or -1
    middle: Middle | None = None  # nested tunnels: the connection between the two tunnels

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty_for(cls, raw: RawBatch, filled: bool = True) -> PacketBatch:
        """All-undecoded batch for `raw` (status set to non_ip, fields zero). With `filled`
        False, the `DECODED` columns are left unset (`np.empty`): for a decoder that writes
        them for every packet, through the C pass or after `reset_rows` (about 3 MB a batch of
        40k packets not zeroed first: 8% of the reader's CPU on the bench capture)."""
        n = len(raw)
        decoded = {
            name: _unset((n, 16) if name in ("src", "dst") else n, dtype)
            for name, (dtype, _) in DECODED.items()
        }
        out = cls(
            buf=raw.buf,
            ts_ns=raw.ts_ns,
            cap_len=raw.cap_len,
            wire_len=raw.wire_len,
            frame_off=raw.frame_off,
            linktype=raw.linktype,
            status=np.full(n, STATUS["non_ip"], dtype=np.uint8),
            tcp_flags=np.zeros(n, dtype=np.uint8),
            tcp_seq=np.zeros(n, dtype=np.uint32),
            tcp_ack=np.zeros(n, dtype=np.uint32),
            tunnel=np.zeros(n, dtype=np.uint8),
            outer_proto=np.zeros(n, dtype=np.uint8),
            outer_src=np.zeros((n, 16), dtype=np.uint8),
            outer_dst=np.zeros((n, 16), dtype=np.uint8),
            outer_sport=np.zeros(n, dtype=np.uint16),
            outer_dport=np.zeros(n, dtype=np.uint16),
            outer_ip_len=np.zeros(n, dtype=np.int32),
            iface=raw.iface,
            frag=np.zeros(n, dtype=np.uint8),
            **decoded,
        )
        if filled:
            out.reset_rows(slice(None))
        return out

    def reset_rows(self, rows: npt.NDArray[np.int64] | slice) -> None:
        """Give the `DECODED` columns at `rows` the value of an undecoded packet."""
        for name, (_, value) in DECODED.items():
            getattr(self, name)[rows] = value

    def select(self, idx: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> PacketBatch:
        """Sub-batch of the packets chosen by a boolean mask or index array (shares buf)."""
        kw: dict[str, Any] = {}
        for f in fields(self):
            col = getattr(self, f.name)
            if f.name == "middle":
                kw[f.name] = None if col is None else col.select(idx, len(self))
            else:
                kw[f.name] = col if f.name == "buf" else col[idx]
        return PacketBatch(**kw)

    def frame(self, i: int) -> bytes:
        """Bytes of packet i's frame as captured."""
        off = int(self.frame_off[i])
        return self.buf[off : off + int(self.cap_len[i])].tobytes()

    def payload(self, i: int) -> bytes:
        """Captured transport payload bytes of packet i (may be shorter than payload_len)."""
        off = int(self.payload_off[i])
        return self.buf[off : off + max(int(self.payload_cap[i]), 0)].tobytes()

    def ok(self) -> npt.NDArray[np.bool_]:
        """Mask of packets decoded to a transport 5-tuple."""
        return np.asarray(self.status == 0)


def addr_str(a: npt.NDArray[np.uint8]) -> str:
    """Text form of one 16-byte address column entry (IPv4-mapped shown as dotted quad)."""
    b = bytes(a.tobytes())
    if b[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(b[12:]))
    return str(ipaddress.IPv6Address(b))


def addr_bytes(text: str) -> bytes:
    """16-byte column form of an IPv4 or IPv6 address string."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def status_counts(status: npt.NDArray[np.uint8]) -> dict[str, int]:
    """Counts of non-ok statuses by name (for summaries)."""
    counts = np.bincount(status, minlength=len(STATUS_NAME))
    return {
        STATUS_NAME.get(code, f"status_{code}"): int(c)
        for code, c in enumerate(counts)
        if c and code != 0
    }

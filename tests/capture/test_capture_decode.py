"""Batch decoder: agreement with dpkt's per-packet decoding over the dev corpus, link types,
IPv6 extension headers, fragments, tunnels, and robustness on arbitrary bytes."""

from __future__ import annotations

import shutil
import socket
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lbm_testing import corpus_root

from capture.batch import (
    FRAG,
    STATUS,
    TUNNEL,
    PacketBatch,
    RawBatch,
    addr_bytes,
    addr_str,
)
from capture.decode.decoder import Decoder, decode, read_batches
from capture.read.reader import open_capture

DEV = corpus_root() / "pcaps" / "dev"
DEV_FILES = sorted(p.name for p in DEV.glob("*.pcap*")) if DEV.is_dir() else []
REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"


def _nflog_payload(frame: bytes) -> tuple[int, bytes] | None:
    """Independent NFLOG TLV walk for the oracle: (family, payload) or None."""
    pos = 4
    while pos + 4 <= len(frame):
        tlen, ttype = struct.unpack_from("<HH", frame, pos)
        if tlen < 4:
            return None
        if ttype == 9:
            return frame[0], frame[pos + 4 : pos + tlen]
        pos += (tlen + 3) & ~3
    return None


def _dpkt_ip(linktype: int, frame: bytes) -> dpkt.Packet | None:
    """dpkt's decoding of one frame down to the IP layer (None if dpkt cannot)."""
    try:
        if linktype == 1:
            ip = dpkt.ethernet.Ethernet(frame).data
        elif linktype == 113:
            ip = dpkt.sll.SLL(frame).data
        elif linktype == 276:
            ip = dpkt.sll2.SLL2(frame).data
        elif linktype == 0:
            ip = dpkt.loopback.Loopback(frame).data
        elif linktype in (101, 228, 229, 12, 14):
            ip = dpkt.ip6.IP6(frame) if frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
        elif linktype == 239:
            got = _nflog_payload(frame)
            if got is None:
                return None
            fam, payload = got
            ip = dpkt.ip.IP(payload) if fam == 2 else dpkt.ip6.IP6(payload)
        else:
            return None
    except (dpkt.UnpackError, IndexError, struct.error, ValueError):
        return None
    return ip if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) else None


def _oracle(ip: dpkt.Packet) -> tuple[str, str, int, int, int, int] | None:
    l4 = ip.data
    if isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
        sport, dport, proto = l4.type, l4.code, 1 if isinstance(l4, dpkt.icmp.ICMP) else 58
    elif isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        sport, dport = l4.sport, l4.dport
        proto = 6 if isinstance(l4, dpkt.tcp.TCP) else 17
    else:
        return None
    if isinstance(ip, dpkt.ip.IP):
        src, dst = (
            socket.inet_ntop(socket.AF_INET, ip.src),
            socket.inet_ntop(socket.AF_INET, ip.dst),
        )
        ip_len = ip.len
    else:
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, ip.src),
            socket.inet_ntop(socket.AF_INET6, ip.dst),
        )
        ip_len = 40 + ip.plen
    return src, dst, sport, dport, proto, ip_len


def _ours(b: PacketBatch, i: int, outer: bool) -> tuple[str, str, int, int, int, int]:
    if outer:
        return (
            addr_str(b.outer_src[i]),
            addr_str(b.outer_dst[i]),
            int(b.outer_sport[i]),
            int(b.outer_dport[i]),
            int(b.outer_proto[i]),
            int(b.outer_ip_len[i]),
        )
    return (
        addr_str(b.src[i]),
        addr_str(b.dst[i]),
        int(b.sport[i]),
        int(b.dport[i]),
        int(b.proto[i]),
        int(b.ip_len[i]),
    )


@pytest.mark.skipif(not DEV_FILES, reason=f"corpus not found at {DEV} (set LBM_CORPUS)")
@pytest.mark.parametrize("name", DEV_FILES)
def test_dev_corpus_agrees_with_dpkt(name: str) -> None:
    compared = agreed = 0
    mismatches: list[str] = []
    for b in read_batches(DEV / name, max_packets=64):  # small batches: cross-batch state too
        for i in range(len(b)):
            ip = _dpkt_ip(int(b.linktype[i]), b.frame(i))
            want = _oracle(ip) if ip is not None else None
            if want is None:
                continue
            compared += 1
            got = _ours(b, i, outer=bool(b.tunnel[i]))
            if (b.status[i] == 0 or b.tunnel[i]) and got == want:
                agreed += 1
                continue
            mismatches.append(f"#{i}: ours={got} status={b.status[i]} dpkt={want}")
    share = agreed / compared if compared else 1.0
    print(f"{name}: {agreed}/{compared} packets agree with dpkt ({share:.1%})")
    assert share >= 0.99, mismatches[:5]


def test_dev_corpus_oracle_compares_every_linktype() -> None:
    """The agreement above is not vacuous: each link type of the dev corpus is exercised."""
    if not DEV_FILES:
        pytest.skip(f"corpus not found at {DEV}")
    seen: dict[int, int] = {}
    for name in DEV_FILES:
        for raw in open_capture(DEV / name).batches():
            for i in range(len(raw)):
                lt = int(raw.linktype[i])
                ip = _dpkt_ip(lt, raw.frame(i))
                if ip is not None and _oracle(ip) is not None:
                    seen[lt] = seen.get(lt, 0) + 1
    assert {0, 1, 113, 228, 239, 276} <= set(seen), seen


# --- the project's generated captures (pcaps/, see pcaps/README.md) ---------------------
def _tuples(path: Path, max_packets: int = 65536, strict: bool = True) -> list[tuple]:
    out: list[tuple] = []
    for b in read_batches(path, max_packets=max_packets):
        for i in range(len(b)):
            if not strict and b.status[i] != 0:
                out.append(("status", int(b.status[i])))
                continue
            assert b.status[i] == 0, (path.name, i, b.status[i])
            out.append(
                (
                    next(k for k, v in TUNNEL.items() if v == b.tunnel[i]),
                    int(b.proto[i]),
                    addr_str(b.src[i]),
                    int(b.sport[i]),
                    addr_str(b.dst[i]),
                    int(b.dport[i]),
                )
            )
    return out


def _session(kind: str, proto: int, a: str, ap: int, b: str, bp: int) -> list[tuple]:
    fwd, rev = (kind, proto, a, ap, b, bp), (kind, proto, b, bp, a, ap)
    return [fwd, rev, fwd, fwd, rev, fwd, rev]


def test_vxlan_inner_flows() -> None:
    got = _tuples(PCAPS / "vxlan.pcap")
    assert got == [
        *_session("vxlan", 6, "10.1.0.1", 40000, "10.2.0.1", 80),
        ("vxlan", 17, "fd00::1", 5353, "fd00::2", 53),
    ]


def test_vxlan_outer_connection_kept() -> None:
    b = next(read_batches(PCAPS / "vxlan.pcap"))
    assert addr_str(b.outer_src[0]) == "192.0.2.1" and int(b.outer_dport[0]) == 4789
    assert int(b.outer_proto[0]) == 17
    assert addr_str(b.outer_dst[7]) == "2001:db8::2"
    # the inner request's payload is addressable for application metadata
    assert b.payload(3).startswith(b"GET / HTTP/1.1")


def test_geneve_inner_flows() -> None:
    assert _tuples(PCAPS / "geneve.pcap") == [
        ("geneve", 17, "10.3.0.1", 33000, "10.4.0.1", 53),
        ("geneve", 6, "10.5.0.1", 41000, "10.6.0.1", 443),
    ]


def test_gre_family_inner_flows() -> None:
    assert _tuples(PCAPS / "gre.pcap") == [
        *_session("gre", 6, "10.7.0.1", 42000, "10.8.0.1", 22),
        ("gre", 17, "fd01::1", 5000, "fd01::2", 6000),
        ("gre", 1, "10.9.0.1", 8, "10.10.0.1", 0),  # ICMP: type/code as ports
        ("erspan", 6, "10.11.0.1", 43000, "10.12.0.1", 8080),
        ("gre", 17, "10.15.0.1", 3333, "10.16.0.1", 4444),  # PPTP enhanced GRE + PPP
        ("ipip", 17, "10.13.0.1", 1111, "10.14.0.1", 2222),
        ("ipip", 6, "fd02::1", 44000, "fd02::2", 25),
    ]


@pytest.mark.parametrize("max_packets", [65536, 1])
def test_ipv6_extension_headers_and_fragments(max_packets: int) -> None:
    """Every fragment carries its datagram's ports, also when each packet is its own batch
    and when the last fragment arrives first."""
    got = _tuples(PCAPS / "ipv6-ext-frag.pcap", max_packets, strict=False)
    assert got[:2] == [
        ("none", 17, "fd10::1", 7000, "fd10::2", 8000),  # hop-by-hop, routing, dest opts
        ("none", 6, "fd10::1", 7001, "fd10::2", 8001),  # AH
    ]
    assert got[2:5] == [("none", 17, "fd20::1", 9000, "fd20::2", 9001)] * 3
    assert got[5:8] == [("none", 17, "10.20.0.1", 9100, "10.20.0.2", 9101)] * 3
    ooo = ("none", 6, "10.21.0.1", 9200, "10.21.0.2", 9201)
    if max_packets > 1:  # reordered within one batch: attributed
        assert got[8:11] == [ooo] * 3
    else:  # the last fragment came in an earlier batch than its first: counted, not guessed
        assert got[8:11] == [("status", STATUS["fragment_later"]), ooo, ooo]


def test_fragment_positions_and_bytes() -> None:
    b = next(read_batches(PCAPS / "ipv6-ext-frag.pcap"))
    assert b.frag[2:8].tolist() == [FRAG["first"], FRAG["middle"], FRAG["last"]] * 2
    # fragments' payload shares add up to the UDP payload plus its 8-byte header
    assert int(b.payload_len[2:5].sum()) == 3000
    assert int(b.payload_len[5:8].sum()) == 3000


def test_later_fragment_without_first_is_counted() -> None:
    path = PCAPS / "ipv6-ext-frag.pcap"
    raw = next(open_capture(path).batches())
    only_later = RawBatch.from_frames([raw.frame(3), raw.frame(4)], [1, 2])
    dec = Decoder()
    b = dec.decode(only_later)
    assert b.status.tolist() == [STATUS["fragment_later"]] * 2
    assert dec.summary["fragment_later"] == 2


def test_generated_pcaps_are_reproducible() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, str(PCAPS / "make_pcaps.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


# --- link types on hand-built frames ------------------------------------------------------
def _ip4_udp() -> bytes:
    from scapy.layers.inet import IP, UDP

    return bytes(IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=1234, dport=53) / b"q")


def _ip6_tcp() -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=4321, dport=443))


V4 = ("192.0.2.1", 1234, "198.51.100.2", 53, 17)
V6 = ("2001:db8::1", 4321, "2001:db8::2", 443, 6)
MACS = b"\x02" * 12


def _sll(proto: int) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, proto)


def _sll2(proto: int) -> bytes:
    return struct.pack(">HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02" * 8)


def _nflog(family: int, payload: bytes) -> bytes:
    prefix = struct.pack("<HH", 8, 10) + b"abc\x00"  # NFULA_PREFIX TLV before the payload
    return bytes([family, 0, 0, 0]) + prefix + struct.pack("<HH", 4 + len(payload), 9) + payload


LINK_CASES = {
    "ethernet": (1, MACS + b"\x08\x00" + _ip4_udp(), V4, -1),
    "802.1q": (1, MACS + b"\x81\x00\x00\x0a\x86\xdd" + _ip6_tcp(), V6, 10),
    "qinq": (1, MACS + b"\x88\xa8\x00\x64\x81\x00\x00\x0b\x08\x00" + _ip4_udp(), V4, 100),
    "mpls": (
        1,
        MACS + b"\x88\x47" + b"\x00\x01\x00\x40" + b"\x00\x02\x01\x40" + _ip4_udp(),
        V4,
        -1,
    ),
    "pppoe": (1, MACS + b"\x88\x64" + b"\x11\x00\x00\x01\x00\x00\x00\x57" + _ip6_tcp(), V6, -1),
    "sll": (113, _sll(0x0800) + _ip4_udp(), V4, -1),
    "sll2": (276, _sll2(0x86DD) + _ip6_tcp(), V6, -1),
    "null-le": (0, struct.pack("<I", 2) + _ip4_udp(), V4, -1),
    "null-be-inet6": (0, struct.pack(">I", 30) + _ip6_tcp(), V6, -1),
    "null-le-inet6-bsd": (0, struct.pack("<I", 24) + _ip6_tcp(), V6, -1),
    "loop": (108, struct.pack(">I", 2) + _ip4_udp(), V4, -1),
    "raw101-v6": (101, _ip6_tcp(), V6, -1),
    "raw12": (12, _ip4_udp(), V4, -1),
    "raw14": (14, _ip6_tcp(), V6, -1),
    "ipv4-228": (228, _ip4_udp(), V4, -1),
    "ipv6-229": (229, _ip6_tcp(), V6, -1),
    "nflog-v4": (239, _nflog(2, _ip4_udp()), V4, -1),
    "nflog-v6": (239, _nflog(10, _ip6_tcp()), V6, -1),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
def test_link_types(case: str) -> None:
    lt, frame, (src, sport, dst, dport, proto), vlan = LINK_CASES[case]
    b = decode(RawBatch.from_frames([frame], [0], linktype=lt))
    assert b.status.tolist() == [0]
    assert (addr_str(b.src[0]), int(b.sport[0]), addr_str(b.dst[0]), int(b.dport[0])) == (
        src,
        sport,
        dst,
        dport,
    )
    assert int(b.proto[0]) == proto and int(b.vlan[0]) == vlan
    assert b.src[0].tobytes() == addr_bytes(src)


def test_mixed_linktypes_in_one_batch_and_reasons() -> None:
    frames = [LINK_CASES[c][1] for c in ("sll", "ethernet", "nflog-v6")]
    frames += [_ip6_tcp(), MACS + b"\x08\x06" + b"\x00" * 28, MACS + b"\x08\x00" + b"\x45"]
    lts = [113, 1, 239, 228, 1, 1]
    b = decode(RawBatch.from_frames(frames, list(range(6)), linktype=lts))
    assert b.status.tolist() == [
        0,
        0,
        0,
        STATUS["bad_ip_version"],
        STATUS["non_ip"],
        STATUS["truncated"],
    ]
    assert b.ip_version.tolist()[:3] == [4, 4, 6]
    unsupported = decode(RawBatch.from_frames([b"\x00" * 40], [0], linktype=147))
    assert unsupported.status.tolist() == [STATUS["unsupported_linktype"]]


def test_snaplen_truncated_payload_is_not_read_past_capture() -> None:
    frame = MACS + b"\x08\x00" + _ip4_udp()
    full = decode(RawBatch.from_frames([frame], [0]))
    cut = decode(RawBatch.from_frames([frame[:-1]], [0], wire_len=[len(frame)]))
    assert int(full.payload_len[0]) == int(cut.payload_len[0]) == 1  # from the headers
    assert int(full.payload_cap[0]) == 1 and int(cut.payload_cap[0]) == 0  # what was captured


def _outer4(proto: int, l4: bytes) -> bytes:
    """Ethernet + IPv4 header claiming 1500 bytes (more than captured) + transport prefix."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 1500, 1, 0, 64, proto, 0, b"\x0a" * 4, b"\x0b" * 4)
    return MACS + b"\x08\x00" + ip + l4


FUZZ_PREFIXES = [
    b"",
    MACS + b"\x08\x00\x45",
    MACS + b"\x86\xdd\x60",
    b"\x45",
    b"\x60",
    MACS + b"\x81\x00\x00\x01\x88\x47",
    _outer4(17, struct.pack(">HHHH", 1, 4789, 1480, 0) + b"\x08"),  # VXLAN
    _outer4(17, struct.pack(">HHHH", 1, 6081, 1480, 0)),  # Geneve
    _outer4(17, struct.pack(">HHHH", 3544, 1, 1480, 0)),  # Teredo
    _outer4(47, b""),  # GRE
    _outer4(4, b""),  # IP in IP
    _outer4(17, struct.pack(">HHHH", 1, 2, 1480, 0) + b"\x60"),  # Teredo heuristic
    MACS + b"\x86\xdd" + struct.pack(">IHBB16s16s", 0x60000000, 200, 0, 64, b"a" * 16, b"b" * 16),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lt=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 147, 228, 229, 239, 276]),
    frames=st.lists(st.binary(max_size=200), min_size=1, max_size=12),
    prefix=st.sampled_from(FUZZ_PREFIXES),
)
def test_arbitrary_bytes_never_raise(lt: int, frames: list[bytes], prefix: bytes) -> None:
    frames = [prefix + f for f in frames]
    b = decode(RawBatch.from_frames(frames, list(range(len(frames))), linktype=lt))
    assert len(b) == len(frames)
    assert set(b.status.tolist()) <= set(STATUS.values())
    ok = b.status == 0
    ends = b.frame_off + b.cap_len
    assert np.all(b.payload_off[ok] + b.payload_cap[ok] <= ends[ok])
    assert np.all(b.payload_off[ok] >= b.frame_off[ok])
    assert set(b.ip_version[ok].tolist()) <= {4, 6}


def test_tcp_options_cut_by_snaplen_keep_offsets_inside_the_frame() -> None:
    from scapy.layers.inet import IP, TCP

    pkt = bytes(
        IP(src="192.0.2.1", dst="192.0.2.2")
        / TCP(sport=1, dport=2, options=[("NOP", None)] * 40)
        / (b"x" * 100)
    )
    frame = MACS + b"\x08\x00" + pkt
    b = decode(RawBatch.from_frames([frame[: 14 + 20 + 24]], [0], wire_len=[len(frame)]))
    assert b.status.tolist() == [0] and int(b.payload_len[0]) == 100
    assert int(b.payload_cap[0]) == 0
    assert int(b.payload_off[0]) <= int(b.frame_off[0] + b.cap_len[0])


def test_batch_size_does_not_change_results() -> None:
    """Vectorised decoding of a whole batch equals decoding packet by packet."""
    cols = (
        "status",
        "ip_version",
        "proto",
        "src",
        "dst",
        "sport",
        "dport",
        "ip_len",
        "payload_len",
        "payload_cap",
        "tcp_flags",
        "tcp_seq",
        "tcp_ack",
        "vlan",
        "tunnel",
        "frag",
        "outer_src",
        "outer_sport",
    )
    files = [DEV / n for n in DEV_FILES] + sorted(PCAPS.glob("*.pcap*"))
    for path in files:
        name = path.name
        big = list(read_batches(path))
        one = list(read_batches(path, max_packets=1))
        if name == "ipv6-ext-frag.pcap":  # a last fragment before its first: see above
            one[8].status[0] = big[0].status[8]
            one[8].sport[0], one[8].dport[0] = big[0].sport[8], big[0].dport[8]
        for c in cols:
            a = np.concatenate([getattr(b, c) for b in big]) if big else np.zeros(0)
            z = np.concatenate([getattr(b, c) for b in one]) if one else np.zeros(0)
            assert np.array_equal(a, z), (name, c)


def test_fragment_table_is_bounded_and_eviction_counted() -> None:
    raw = next(open_capture(PCAPS / "ipv6-ext-frag.pcap").batches())
    # first fragments of three datagrams, then a later fragment of the oldest one
    frames = [raw.frame(i) for i in (2, 5, 9, 3)]
    dec = Decoder(max_fragments=2)
    b = dec.decode(RawBatch.from_frames(frames, [1, 2, 3, 4]))
    assert b.status.tolist() == [0, 0, 0, STATUS["fragment_later"]]
    assert dec.summary["fragments_evicted"] == 1 and len(dec.frags) == 2


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("name", ["vxlan.pcap", "geneve.pcap", "gre.pcap"])
def test_generated_tunnels_agree_with_tshark(name: str) -> None:
    """Wireshark's dissectors see the same innermost addresses and ports in our captures."""
    import subprocess

    fields = ["ip.src", "ipv6.src", "tcp.srcport", "udp.srcport", "icmp.type"]
    cmd = ["tshark", "-r", str(PCAPS / name), "-T", "fields", "-E", "occurrence=l"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    b = next(read_batches(PCAPS / name))
    assert len(rows) == len(b)
    for i, (ip4, ip6, tport, uport, itype) in enumerate(rows):
        want_addr = ip6 if b.ip_version[i] == 6 else ip4
        want_port = {6: tport, 17: uport, 1: itype}[int(b.proto[i])]
        assert (addr_str(b.src[i]), int(b.sport[i])) == (want_addr, int(want_port)), i


def test_nested_tunnels_decode_innermost_and_keep_outermost() -> None:
    from scapy.layers.inet import GRE, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    inner = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=2000)
    mid = IP(src="192.0.2.3", dst="192.0.2.4") / UDP(sport=5, dport=4789) / VXLAN(vni=1) / inner
    pkt = Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / GRE(proto=0x0800) / mid
    b = decode(RawBatch.from_frames([bytes(pkt)], [0]))
    assert b.status.tolist() == [0] and int(b.tunnel[0]) == TUNNEL["gre"]
    assert (addr_str(b.src[0]), int(b.sport[0]), int(b.dport[0])) == ("10.0.0.1", 1000, 2000)
    assert addr_str(b.outer_src[0]) == "192.0.2.1" and int(b.outer_proto[0]) == 47


@pytest.mark.skipif(not DEV_FILES, reason=f"corpus not found at {DEV} (set LBM_CORPUS)")
def test_teredo_inner_flows_match_zeek() -> None:
    """Teredo is decapsulated (by port 3544 and, like Zeek, by payload on other ports):
    inner flows and their packet counts match the tunnelled connections in Zeek's conn.log;
    the rest of the tunnelled packets are bubbles (IPv6 without a next header)."""
    log = corpus_root() / "zeek_baselines" / "zeek__tunnels__Teredo.pcap"
    lines = next(log.glob("*/conn.log")).read_text().splitlines()
    names = next(ln for ln in lines if ln.startswith("#fields")).split("\t")[1:]
    want: dict[tuple, int] = {}
    for ln in lines:
        if ln.startswith("#"):
            continue
        row = dict(zip(names, ln.split("\t"), strict=True))
        if row["tunnel_parents"] == "-":
            continue
        ends = sorted([row["id.orig_h"], row["id.resp_h"]])
        pkts = int(row["orig_pkts"]) + int(row["resp_pkts"])
        key = (*ends, row["proto"])
        want[key] = want.get(key, 0) + pkts
    got: dict[tuple, int] = {}
    bubbles = 0
    for b in read_batches(DEV / "zeek__tunnels__Teredo.pcap"):
        for i in np.nonzero(b.tunnel == TUNNEL["teredo"])[0]:
            if int(b.proto[i]) == 59:
                bubbles += 1
                continue
            proto = {6: "tcp", 17: "udp", 58: "icmp"}[int(b.proto[i])]
            key = (*sorted([addr_str(b.src[i]), addr_str(b.dst[i])]), proto)
            got[key] = got.get(key, 0) + 1
    assert got == want
    assert bubbles == 3

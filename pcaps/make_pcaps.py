"""Generate the project's own small test captures (what the shared corpus lacks).

Deterministic: fixed addresses, ports, sequence numbers and timestamps; packets are built
with scapy and written by the small pcap/pcapng writers below, so running it again gives
byte-identical files. Run from the repository root:

    .venv/bin/python pcaps/make_pcaps.py            # (re)write the files next to this script
    .venv/bin/python pcaps/make_pcaps.py --check    # exit 1 if a committed file differs

Files (see README.md for the 5-tuples each one carries):
- vxlan.pcap: VXLAN over IPv4 and over IPv6, inner Ethernet (one with an 802.1Q tag).
- geneve.pcap: Geneve with options carrying Ethernet, and Geneve carrying IPv4 directly.
- gre.pcap: GRE with key+sequence (IPv4), GRE IPv6, GRE transparent Ethernet bridging,
  ERSPAN type II, PPTP enhanced GRE (PPP), IP-in-IP and 6in4.
- ipv6-ext-frag.pcap: IPv6 hop-by-hop + routing + destination options, AH, IPv6 and IPv4
  fragments (one datagram's fragments out of order).
- tls-split-hello.pcap: a subject's TLS flows with ClientHellos split over several segments
  (one to a do-not-decrypt server), plain HTTP, DNS, and a non-subject's TLS flow.
- mixed-linktypes.pcapng: two sections (little- then big-endian), interfaces with link
  types Ethernet, raw IP, Linux SLL2, BSD NULL, IPv6, different if_tsresol (us, ns, ms,
  2^-20 s) and an if_tsoffset; EPB, SPB and obsolete PB; skipped NRB, ISB and custom blocks.
- unknown-transport.pcap, vntag.pcap, nested-tunnels.pcap: from fidelity_frames.py (IP
  protocols Zeek logs as unknown_transport, VN-Tag, nested tunnels).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import struct
import sys
from pathlib import Path
from typing import Any

from scapy.compat import raw
from scapy.contrib.erspan import ERSPAN_II
from scapy.contrib.geneve import GENEVE
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.layers.ppp import PPP
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def eth(p: Packet) -> Packet:
    return Ether(src=MAC_A, dst=MAC_B) / p


def tcp_session(
    src: str, dst: str, sport: int, dport: int, data: bytes, v6: bool = False
) -> list[Packet]:
    """Handshake, one request, its ACK, FIN exchange (both directions, fixed seq numbers)."""
    L3 = IPv6 if v6 else IP
    a, b = L3(src=src, dst=dst), L3(src=dst, dst=src)
    return [
        a / TCP(sport=sport, dport=dport, flags="S", seq=1000),
        b / TCP(sport=dport, dport=sport, flags="SA", seq=5000, ack=1001),
        a / TCP(sport=sport, dport=dport, flags="A", seq=1001, ack=5001),
        a / TCP(sport=sport, dport=dport, flags="PA", seq=1001, ack=5001) / data,
        b / TCP(sport=dport, dport=sport, flags="A", seq=5001, ack=1001 + len(data)),
        a / TCP(sport=sport, dport=dport, flags="FA", seq=1001 + len(data), ack=5001),
        b / TCP(sport=dport, dport=sport, flags="FA", seq=5001, ack=1002 + len(data)),
    ]


def dns_query(src: str, dst: str, sport: int, name: str, v6: bool = False) -> Packet:
    L3 = IPv6 if v6 else IP
    return L3(src=src, dst=dst) / UDP(sport=sport, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname=name))


def write_pcap(
    path: Path, frames: list[bytes], linktype: int = 1, step_us: int = 1_001_000
) -> None:
    """Packet i at T0 + i * step_us microseconds."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        sec, usec = divmod(i * step_us, 1_000_000)
        out.append(struct.pack("<IIII", T0 + sec, usec, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


def vxlan() -> list[bytes]:
    outer4 = eth(IP(src="192.0.2.1", dst="192.0.2.2", id=1)) / UDP(sport=49152, dport=4789)
    inner = [
        raw(outer4 / VXLAN(vni=42) / eth(p))
        for p in tcp_session(
            "10.1.0.1", "10.2.0.1", 40000, 80, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
        )
    ]
    outer6 = (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / UDP(sport=49153, dport=4789)
    )
    q = dns_query("fd00::1", "fd00::2", 5353, "vxlan.example", v6=True)
    inner.append(raw(outer6 / VXLAN(vni=43) / Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7) / q))
    return inner


def geneve() -> list[bytes]:
    outer = eth(IP(src="192.0.2.10", dst="192.0.2.20", id=2)) / UDP(sport=50000, dport=6081)
    opt = b"\x01\x02\x03\x01" + b"\xaa\xbb\xcc\xdd"  # one 4-byte option (class, type, len=1)
    g_eth = GENEVE(vni=7, proto=0x6558, optionlen=2, options=opt)
    frames = [raw(outer / g_eth / eth(dns_query("10.3.0.1", "10.4.0.1", 33000, "geneve.example")))]
    g_ip = GENEVE(vni=8, proto=0x0800)
    frames.append(
        raw(
            outer
            / g_ip
            / IP(src="10.5.0.1", dst="10.6.0.1")
            / TCP(sport=41000, dport=443, flags="S", seq=1)
        )
    )
    return frames


def gre() -> list[bytes]:
    o = eth(IP(src="192.0.2.30", dst="192.0.2.40", id=3))
    frames = [
        raw(o / GRE(key_present=1, key=1234, seqnum_present=1, sequence_number=i, proto=0x0800) / p)
        for i, p in enumerate(tcp_session("10.7.0.1", "10.8.0.1", 42000, 22, b"SSH-2.0-x\r\n"))
    ]
    frames.append(
        raw(
            o
            / GRE(proto=0x86DD)
            / IPv6(src="fd01::1", dst="fd01::2")
            / UDP(sport=5000, dport=6000)
            / b"v6 in gre"
        )
    )
    frames.append(
        raw(
            o
            / GRE(proto=0x6558)
            / eth(IP(src="10.9.0.1", dst="10.10.0.1") / ICMP(type=8, code=0, id=1, seq=1))
        )
    )
    frames.append(
        raw(
            o
            / GRE(seqnum_present=1, sequence_number=9, proto=0x88BE)
            / ERSPAN_II(session_id=5)
            / eth(
                IP(src="10.11.0.1", dst="10.12.0.1")
                / TCP(sport=43000, dport=8080, flags="S", seq=1)
            )
        )
    )
    pptp = (
        b"\x30\x01\x88\x0b"
        + struct.pack(">HHI", 0, 77, 1)  # ver 1, S bit, key=len/call id, seq
        + raw(
            PPP(proto=0x0021)
            / IP(src="10.15.0.1", dst="10.16.0.1")
            / UDP(sport=3333, dport=4444)
            / b"ppp"
        )
    )
    pptp = pptp[:4] + struct.pack(">H", len(pptp) - 12) + pptp[6:]
    frames.append(raw(eth(IP(src="192.0.2.30", dst="192.0.2.40", proto=47, id=4) / pptp)))
    frames.append(
        raw(
            eth(
                IP(src="192.0.2.50", dst="192.0.2.60", proto=4)
                / IP(src="10.13.0.1", dst="10.14.0.1")
                / UDP(sport=1111, dport=2222)
                / b"ipip"
            )
        )
    )
    frames.append(
        raw(
            eth(
                IP(src="192.0.2.50", dst="192.0.2.60", proto=41)
                / IPv6(src="fd02::1", dst="fd02::2")
                / TCP(sport=44000, dport=25, flags="S", seq=1)
            )
        )
    )
    return frames


def ipv6_ext_frag() -> list[bytes]:
    frames = [
        raw(
            eth(
                IPv6(src="fd10::1", dst="fd10::2")
                / IPv6ExtHdrHopByHop()
                / IPv6ExtHdrRouting(addresses=["fd10::3"], segleft=0)
                / IPv6ExtHdrDestOpt()
                / UDP(sport=7000, dport=8000)
                / b"ext"
            )
        ),
        raw(
            eth(
                IPv6(src="fd10::1", dst="fd10::2")
                / AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12)
                / TCP(sport=7001, dport=8001, flags="S", seq=1)
            )
        ),
    ]
    big6 = (
        IPv6(src="fd20::1", dst="fd20::2")
        / IPv6ExtHdrFragment(id=0x1234)
        / UDP(sport=9000, dport=9001)
        / (b"6" * 3000)
    )
    frames += [raw(eth(f)) for f in fragment6(big6, 1280)]
    big4 = (
        IP(src="10.20.0.1", dst="10.20.0.2", id=0x4321)
        / UDP(sport=9100, dport=9101)
        / (b"4" * 3000)
    )
    frames += [raw(eth(f)) for f in fragment(big4, 1400)]
    ooo = (
        IP(src="10.21.0.1", dst="10.21.0.2", id=0x5555)
        / TCP(sport=9200, dport=9201, flags="PA", seq=1)
        / (b"o" * 2000)
    )
    parts = [raw(eth(f)) for f in fragment(ooo, 800)]
    frames += [parts[-1], *parts[:-1]]  # last fragment first
    return frames


# --- pcapng ---------------------------------------------------------------------------
def _opt(e: str, code: int, val: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(val)) + val + b"\x00" * (-len(val) % 4)


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _shb(e: str) -> bytes:
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(e: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += _opt(e, 0, b"")
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts)


def _epb(e: str, iface: int, ts: int, frame: bytes) -> bytes:
    return _block(
        e,
        6,
        struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame,
    )


def _spb(e: str, frame: bytes) -> bytes:
    """Simple Packet Block: original length + data, no interface id or timestamp."""
    return _block(e, 3, struct.pack(e + "I", len(frame)) + frame)


def _pb(e: str, ts: int, frame: bytes) -> bytes:
    """Obsolete Packet Block: 16-bit interface id and drops count, then like an EPB."""
    hdr = struct.pack(e + "HHIIII", 0, 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
    return _block(e, 2, hdr + frame)


def mixed_pcapng() -> bytes:
    le, be = "<", ">"
    ip4 = raw(IP(src="10.30.0.1", dst="10.30.0.2") / UDP(sport=30001, dport=30002) / b"raw")
    # SLL2: protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8)
    out = [
        _shb(le),
        _idb(le, 1),  # 0: Ethernet, default microseconds
        _idb(le, 101, tsresol=9),  # 1: raw IP, nanoseconds
        _idb(le, 276, tsresol=3, tsoffset=100),  # 2: SLL2, milliseconds, +100 s offset
        _idb(le, 0),  # 3: BSD NULL
        _epb(
            le,
            0,
            T0 * 10**6 + 1,
            raw(
                eth(
                    IP(src="10.31.0.1", dst="10.31.0.2")
                    / TCP(sport=31001, dport=80, flags="S", seq=1)
                )
            ),
        ),
        _block(le, 4, _opt(le, 1, b"\x00" * 4) + _opt(le, 0, b"")),  # NRB (skipped)
        _epb(le, 1, T0 * 10**9 + 2, ip4),
        _block(le, 0x40000BAD, struct.pack("<I", 32473) + b"custom"),  # custom block (skipped)
        _epb(
            le,
            2,
            T0 * 10**3 + 3,
            sll2 + raw(IP(src="10.32.0.1", dst="10.32.0.2") / ICMP(type=8, code=0)),
        ),
        _epb(
            le,
            3,
            T0 * 10**6 + 4,
            struct.pack("<I", 2)
            + raw(
                IP(src="10.33.0.1", dst="10.33.0.2") / TCP(sport=33001, dport=443, flags="S", seq=1)
            ),
        ),
        _spb(le, raw(eth(IP(src="10.36.0.1", dst="10.36.0.2") / UDP(sport=36001, dport=36002)))),
        _pb(
            le,
            T0 * 10**6 + 7,
            raw(eth(IP(src="10.37.0.1", dst="10.37.0.2") / UDP(sport=37001, dport=37002))),
        ),
        _block(le, 5, struct.pack("<III", 0, 0, 0)),  # ISB (skipped)
        _shb(be),
        _idb(be, 229),  # 0: raw IPv6
        _idb(be, 1, tsresol=0x94),  # 1: Ethernet, 2^-20 s
        _epb(
            be,
            0,
            T0 * 10**6 + 5,
            raw(IPv6(src="fd30::1", dst="fd30::2") / UDP(sport=34001, dport=34002) / b"be"),
        ),
        _epb(
            be,
            1,
            (T0 << 20) + (1 << 19),
            raw(
                eth(IP(src="10.35.0.1", dst="10.35.0.2") / UDP(sport=35001, dport=35002) / b"half")
            ),
        ),
    ]
    return b"".join(out)


# tls-split-hello.pcap: canaries the subject-archive tests look for
DND_CANARY = b"DND-CANARY-4c1d9e"  # only in flows to do-not-decrypt servers
SUBJECT_CANARY = b"SUBJECT-CANARY-52a7"  # in the subject's other flows
OTHER_CANARY = b"NONSUBJECT-CANARY-e03b"  # in the non-subject's flow


def client_hello(sni: str, key_len: int) -> bytes:
    """A TLS 1.3 ClientHello whose key share is `key_len` bytes (1216 for X25519MLKEM768,
    so the hello spreads over several segments) and whose server name comes last."""
    name = sni.encode()
    key = bytes((i * 7 + 3) & 0xFF for i in range(key_len))
    share = struct.pack("!HHH", key_len + 4, 0x11EC, key_len) + key
    exts = struct.pack("!HH", 51, len(share)) + share
    exts += struct.pack("!HHB", 43, 3, 2) + b"\x03\x04"
    exts += struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


SERVER_HELLO = (
    b"\x16\x03\x03\x00\x2e\x02\x00\x00\x2a\x03\x03" + bytes(32) + b"\x00\x13\x01\x00\x00\x00"
)


def app_data(canary: bytes) -> bytes:
    return b"\x17\x03\x03" + struct.pack("!H", len(canary)) + canary


def tcp_turns(
    src: str, dst: str, sport: int, dport: int, turns: list[tuple[bool, bytes]]
) -> list[Packet]:
    """Handshake, then each (from the client?, payload) segment in order, then FIN exchange."""
    a, b = IP(src=src, dst=dst), IP(src=dst, dst=src)
    cs, ss = 1001, 5001
    out = [
        a / TCP(sport=sport, dport=dport, flags="S", seq=cs - 1),
        b / TCP(sport=dport, dport=sport, flags="SA", seq=ss - 1, ack=cs),
        a / TCP(sport=sport, dport=dport, flags="A", seq=cs, ack=ss),
    ]
    for client, data in turns:
        if client:
            out.append(a / TCP(sport=sport, dport=dport, flags="PA", seq=cs, ack=ss) / data)
            cs += len(data)
        else:
            out.append(b / TCP(sport=dport, dport=sport, flags="PA", seq=ss, ack=cs) / data)
            ss += len(data)
    return [
        *out,
        a / TCP(sport=sport, dport=dport, flags="FA", seq=cs, ack=ss),
        b / TCP(sport=dport, dport=sport, flags="FA", seq=ss, ack=cs + 1),
        a / TCP(sport=sport, dport=dport, flags="A", seq=cs + 1, ack=ss + 1),
    ]


def tls_turns(hello: bytes, cuts: list[int], canary: bytes) -> list[tuple[bool, bytes]]:
    """A ClientHello cut at `cuts`, the ServerHello, then application data each way."""
    edges = [0, *cuts, len(hello)]
    turns = [(True, hello[x:y]) for x, y in itertools.pairwise(edges)]
    return [*turns, (False, SERVER_HELLO), (True, app_data(canary)), (False, app_data(canary))]


def tls_split_hello() -> list[bytes]:
    """A subject (10.40.0.5) and a non-subject (10.40.0.6), flows interleaved packet by packet:
    TLS to a do-not-decrypt server with a post-quantum-sized ClientHello in 4 segments (the
    first only the 5-byte record header), the same in one segment to another such server, TLS
    to an ordinary server with the hello in 3 segments, plain HTTP, a DNS query; and the
    non-subject's TLS to a do-not-decrypt server."""
    subj, other = "10.40.0.5", "10.40.0.6"
    pq = client_hello("portal.nhs.uk", 1216)
    flows = [
        tcp_turns(subj, "198.51.100.10", 50001, 443, tls_turns(pq, [5, 400, 800], DND_CANARY)),
        tcp_turns(
            subj,
            "198.51.100.11",
            50002,
            443,
            tls_turns(client_hello("online.barclays.co.uk", 32), [], DND_CANARY),
        ),
        tcp_turns(
            subj,
            "198.51.100.20",
            50003,
            443,
            tls_turns(client_hello("www.example.com", 1216), [300, 900], SUBJECT_CANARY),
        ),
        tcp_turns(
            subj,
            "198.51.100.30",
            50004,
            80,
            [
                (True, b"GET /" + SUBJECT_CANARY + b" HTTP/1.1\r\nHost: plain.example\r\n\r\n"),
                (False, b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n" + SUBJECT_CANARY),
            ],
        ),
        [dns_query(subj, "198.51.100.53", 53001, "plain.example")],
        tcp_turns(other, "198.51.100.10", 50005, 443, tls_turns(pq, [], OTHER_CANARY)),
    ]
    frames: list[bytes] = []
    for step in range(max(len(f) for f in flows)):
        frames.extend(raw(eth(f[step])) for f in flows if step < len(f))
    return frames


def build() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name, frames in (
        ("vxlan.pcap", vxlan()),
        ("geneve.pcap", geneve()),
        ("gre.pcap", gre()),
        ("ipv6-ext-frag.pcap", ipv6_ext_frag()),
        ("tls-split-hello.pcap", tls_split_hello()),
    ):
        tmp = HERE / (name + ".tmp")
        write_pcap(tmp, frames, step_us=10_000 if name == "tls-split-hello.pcap" else 1_001_000)
        files[name] = tmp.read_bytes()
        tmp.unlink()
    files["mixed-linktypes.pcapng"] = mixed_pcapng()
    for name, make in _fidelity_frames().items():  # Zeek-fidelity captures (fidelity_frames.py)
        tmp = HERE / (name + ".tmp")
        write_pcap(tmp, make())
        files[name] = tmp.read_bytes()
        tmp.unlink()
    return files


def _fidelity_frames() -> dict[str, Any]:
    """fidelity_frames.FILES, loaded by path (this script is also loaded by path in tests)."""
    spec = importlib.util.spec_from_file_location("fidelity_frames", HERE / "fidelity_frames.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.FILES)


def main() -> int:
    ap = argparse.ArgumentParser(description="generate pcaps/ test captures")
    ap.add_argument("--check", action="store_true", help="compare with the files on disk")
    args = ap.parse_args()
    differ = []
    for name, data in build().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                differ.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if differ:
        print("differs from generator output: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Frames for the Zeek-fidelity captures (imported by make_pcaps.py, which writes the files).

- unknown-transport.pcap: IP protocols Zeek logs as `unknown_transport` (ports 0, ip_proto):
  ESP both ways, SCTP (two associations between the same hosts: one Zeek connection, as
  its key has no ports), OSPF, IGMP, GRE with a protocol type no decoder knows (not a
  tunnel), protocol 253 over IPv4 and IPv6.
- vntag.pcap: VN-Tag (EtherType 0x8926) frames, shaped like Zeek's core.vntag trace (three
  protocol-253 packets of 100 IP bytes), and a DNS exchange behind VN-Tag then 802.1Q.
- nested-tunnels.pcap: VXLAN inside Geneve (a TCP session), GRE inside VXLAN (a DNS
  exchange, both ways through the same tunnels), and Geneve > VXLAN > VXLAN, one level
  deeper than Zeek's default Tunnel::max_depth (2) decapsulates.

Addresses are documentation/private ranges; payloads are made-up bytes.
"""

from __future__ import annotations

import struct

from scapy.compat import raw
from scapy.contrib.geneve import GENEVE
from scapy.contrib.igmp import IGMP
from scapy.contrib.ospf import OSPF_Hdr, OSPF_Hello
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
VNTAG = 0x8926


def _eth(p: Packet) -> Packet:
    return Ether(src=MAC_A, dst=MAC_B) / p


def _esp(spi: int, seq: int, n: int) -> bytes:
    return struct.pack("!II", spi, seq) + bytes(range(n))


def unknown_transport() -> list[bytes]:
    a, b = "10.60.0.1", "10.60.0.2"
    out = [
        IP(src=a, dst=b, proto=50) / Raw(_esp(0x1001, 1, 40)),
        IP(src=b, dst=a, proto=50) / Raw(_esp(0x2002, 1, 56)),
        IP(src=a, dst=b, proto=50) / Raw(_esp(0x1001, 2, 40)),
        IP(src="10.60.0.3", dst="10.60.0.4") / SCTP(sport=5000, dport=38412) / SCTPChunkInit(),
        IP(src="10.60.0.4", dst="10.60.0.3") / SCTP(sport=38412, dport=5000) / SCTPChunkInitAck(),
        IP(src="10.60.0.3", dst="10.60.0.4") / SCTP(sport=5001, dport=38412) / SCTPChunkInit(),
        IP(src="10.60.0.5", dst="224.0.0.5", ttl=1) / OSPF_Hdr(src="10.60.0.5") / OSPF_Hello(),
        IP(src="10.60.0.6", dst="224.0.0.22", ttl=1) / IGMP(type=0x22),
        IP(src="10.60.0.6", dst="224.0.0.22", ttl=1) / IGMP(type=0x22),
        # GRE carrying a protocol type no decoder knows: a flow, not a tunnel
        IP(src="10.60.0.7", dst="10.60.0.8") / GRE(proto=0x88B5) / Raw(b"\x00" * 24),
        IP(src="10.60.0.7", dst="10.60.0.8") / GRE(proto=0x88B5) / Raw(b"\x00" * 24),
        IP(src="10.60.0.9", dst="10.60.0.10", proto=253) / Raw(b"\x5a" * 30),
        IPv6(src="fd60::1", dst="fd60::2", nh=253) / Raw(b"\x5a" * 20),
    ]
    return [raw(_eth(p)) for p in out]


def _vntag(inner: Packet, ethertype: int) -> bytes:
    """Ethernet, VN-Tag (4 bytes of tag, then the next EtherType), then `inner`."""
    tag = struct.pack("!HHH", 0x8001, 0x0002, ethertype)
    return raw(Ether(src=MAC_A, dst=MAC_B, type=VNTAG)) + tag + raw(inner)


def vntag() -> list[bytes]:
    frames = [
        _vntag(IP(src="10.50.0.1", dst="10.50.0.2", proto=253, id=i) / Raw(b"\x00" * 80), 0x0800)
        for i in range(3)
    ]
    q = IP(src="10.50.0.3", dst="10.50.0.4") / UDP(sport=5353, dport=53)
    r = IP(src="10.50.0.4", dst="10.50.0.3") / UDP(sport=53, dport=5353)
    qd = DNSQR(qname="vntag.example")
    frames.append(_vntag(Dot1Q(vlan=10) / q / DNS(id=9, rd=1, qd=qd), 0x8100))
    an = DNSRR(rrname="vntag.example", rdata="10.50.0.9")
    frames.append(_vntag(Dot1Q(vlan=10) / r / DNS(id=9, qr=1, qd=qd, an=an), 0x8100))
    return frames


def _tcp_session(src: str, dst: str, sport: int, dport: int, data: bytes) -> list[Packet]:
    a, b = IP(src=src, dst=dst), IP(src=dst, dst=src)
    n = len(data)
    return [
        a / TCP(sport=sport, dport=dport, flags="S", seq=1000),
        b / TCP(sport=dport, dport=sport, flags="SA", seq=5000, ack=1001),
        a / TCP(sport=sport, dport=dport, flags="A", seq=1001, ack=5001),
        a / TCP(sport=sport, dport=dport, flags="PA", seq=1001, ack=5001) / data,
        b / TCP(sport=dport, dport=sport, flags="A", seq=5001, ack=1001 + n),
        a / TCP(sport=sport, dport=dport, flags="FA", seq=1001 + n, ack=5001),
        b / TCP(sport=dport, dport=sport, flags="FA", seq=5001, ack=1002 + n),
    ]


def nested_tunnels() -> list[bytes]:
    frames: list[bytes] = []
    # VXLAN inside Geneve: one direction of outer and middle tunnel, inner TCP both ways
    geneve = IP(src="192.0.2.10", dst="192.0.2.20", id=1) / UDP(sport=50000, dport=6081)
    vx = IP(src="10.70.0.1", dst="10.70.0.2", id=2) / UDP(sport=50001, dport=4789)
    for p in _tcp_session("10.71.0.1", "10.71.0.2", 40000, 80, b"GET / HTTP/1.1\r\n\r\n"):
        inner = _eth(vx / VXLAN(vni=71) / _eth(p))
        frames.append(raw(_eth(geneve / GENEVE(vni=70, proto=0x6558) / inner)))
    # GRE inside VXLAN: query and answer, each through the tunnels in its own direction
    q = IP(src="10.73.0.1", dst="10.73.0.2") / UDP(sport=5353, dport=53)
    r = IP(src="10.73.0.2", dst="10.73.0.1") / UDP(sport=53, dport=5353)
    qd = DNSQR(qname="nested.example")
    for inner_ip, fwd in ((q / DNS(id=3, rd=1, qd=qd), True), (r / DNS(id=3, qr=1, qd=qd), False)):
        o1, o2 = ("192.0.2.30", "192.0.2.40") if fwd else ("192.0.2.40", "192.0.2.30")
        g1, g2 = ("10.72.0.1", "10.72.0.2") if fwd else ("10.72.0.2", "10.72.0.1")
        gre = IP(src=g1, dst=g2) / GRE(proto=0x0800) / inner_ip
        outer = IP(src=o1, dst=o2) / UDP(sport=4789, dport=4789) / VXLAN(vni=72)
        frames.append(raw(_eth(outer / _eth(gre))))
    # three levels: Geneve > VXLAN > VXLAN > TCP SYN; Zeek stops after two
    l1 = IP(src="192.0.2.50", dst="192.0.2.60") / UDP(sport=50004, dport=6081)
    l2 = IP(src="10.74.0.1", dst="10.74.0.2") / UDP(sport=50005, dport=4789)
    l3 = IP(src="10.75.0.1", dst="10.75.0.2") / UDP(sport=50006, dport=4789)
    syn = IP(src="10.76.0.1", dst="10.76.0.2") / TCP(sport=41000, dport=443, flags="S", seq=9)
    deep = _eth(l3 / VXLAN(vni=75) / _eth(syn))
    frames.append(raw(_eth(l1 / GENEVE(vni=73, proto=0x6558) / _eth(l2 / VXLAN(vni=74) / deep))))
    return frames


FILES = {
    "unknown-transport.pcap": unknown_transport,
    "vntag.pcap": vntag,
    "nested-tunnels.pcap": nested_tunnels,
}

"""The batch DNS scan in C (`capture.app.dnsscan`) gives exactly what the Python parser gives, and
leaves every message it is not sure about to the Python parser, so `dns` rows do not depend
on which path read a message."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest
from capture_zeeklogs import corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.app import dnsscan
from capture.app.dnsparse import DnsError, parse_dns
from capture.decode.decoder import read_batches

DNS_PORTS = [53, 137, 5353, 5355]


def _python_view(msg: bytes) -> dnsscan.DnsView | None:
    try:
        return dnsscan.view(parse_dns(msg))
    except (DnsError, IndexError, ValueError, struct.error):
        return None


def _scan(msgs: list[bytes]) -> list[dnsscan.DnsView | None]:
    buf = np.frombuffer(b"".join(msgs) + b"\x00", np.uint8)
    off = np.cumsum([0] + [len(m) for m in msgs[:-1]], dtype=np.int64)
    cap = np.array([len(m) for m in msgs], np.int32)
    return dnsscan.scan(buf, off, cap)


def _agree(msgs: list[bytes]) -> int:
    """Asserts agreement; returns how many messages C read itself."""
    by_c = 0
    for msg, v in zip(msgs, _scan(msgs), strict=True):
        if v is None:
            continue
        by_c += 1
        assert _python_view(msg) == v, msg.hex()
    return by_c


def _corpus_messages() -> list[bytes]:
    out = []
    for sub in ("dev", "malformed"):
        for pcap in sorted((corpus() / "pcaps" / sub).iterdir()):
            try:
                for b in read_batches(pcap):
                    ok = (b.status == 0) & (b.proto == 17)
                    ok &= np.isin(b.sport, DNS_PORTS) | np.isin(b.dport, DNS_PORTS)
                    out += [b.payload(i) for i in np.flatnonzero(ok).tolist()]
            except Exception:  # a broken file header: nothing to take from it
                continue
    return out


def test_c_scan_matches_python_on_the_corpus() -> None:
    msgs = _corpus_messages()
    assert len(msgs) >= 100
    by_c = _agree(msgs)
    # the C path does the work: every message the Python parser reads in full, bar odd ones
    readable = sum(_python_view(m) is not None for m in msgs)
    assert by_c >= 0.9 * readable, (by_c, readable)


def test_typical_answers_are_rendered_like_the_python_parser() -> None:
    """A, AAAA, CNAME, MX, SRV, TXT, an unrendered type, compression, mDNS (no question)."""
    q = dpkt.dns.DNS.Q(name="www.example.com", type=1)
    rr = dpkt.dns.DNS.RR
    an = [
        rr(name="www.example.com", type=5, cls=1, ttl=60, rdata=b""),
        rr(name="www.example.com", type=1, cls=1, ttl=300, rdata=bytes([192, 0, 2, 7])),
        rr(name="www.example.com", type=28, cls=1, ttl=30, rdata=bytes(15) + b"\x01"),
        rr(name="x.example", type=16, cls=1, ttl=5, rdata=b"\x03abc\x02de"),
        rr(name="x.example", type=99, cls=1, ttl=5, rdata=b"\x00\x01"),
    ]
    an[0].cname = "cdn.example.net"
    msgs = [
        bytes(dpkt.dns.DNS(id=7, op=0x8180, qd=[q], an=an)),
        bytes(dpkt.dns.DNS(id=0, op=0x8400, qd=[], an=an[1:2])),  # mDNS style
        bytes(dpkt.dns.DNS(id=9, qd=[q])),
    ]
    views = _scan(msgs)
    assert all(v is not None for v in views)
    assert _agree(msgs) == 3
    v0 = views[0]
    assert v0 is not None and v0.answers[:3] == ["cdn.example.net", "192.0.2.7", "::1"]
    v1 = views[1]
    assert v1 is not None and (v1.qname, v1.qclass) == ("www.example.com", None)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(range(3)),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 220),
)
def test_damaged_messages_never_disagree(base: int, edits: list[tuple[int, int]], cut: int) -> None:
    """Random byte flips and truncations: C either reads a message exactly as Python does or
    hands it to Python (never a row where Python would count a parse error)."""
    q = dpkt.dns.DNS.Q(name=f"n{base}.example.org", type=28)
    a = dpkt.dns.DNS.RR(name=q.name, type=1, cls=1, ttl=9, rdata=b"\x0a\x00\x00\x01")
    m = bytearray(bytes(dpkt.dns.DNS(id=base, op=0x8180, qd=[q], an=[a, a])))
    for pos, val in edits:
        if pos < len(m):
            m[pos] = val
    _agree([bytes(m[:cut]), bytes(m)])


@pytest.mark.parametrize("junk", [b"", b"\x00" * 11, b"\xff" * 40, b"\x00" * 12 + b"\xc0\x0c"])
def test_junk_goes_to_the_python_parser(junk: bytes) -> None:
    v = _scan([junk])[0]
    assert v is None or _python_view(junk) == v


def _dns_frame(src: str, sport: int, dst: str, dport: int, msg: bytes) -> bytes:
    import socket

    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=msg)
    udp.ulen = 8 + len(msg)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _dns_capture(path: Path) -> None:
    """Flow A: 35 query/answer pairs on one 5-tuple (AppMeta stops after 64 messages); B: one
    pair; C: an answer whose name differs from the query's (not a pair); D: a query alone."""
    frames = []

    def qr(ident: int, name: str, ans_name: str | None = None) -> tuple[bytes, bytes]:
        q = dpkt.dns.DNS(id=ident, qd=[dpkt.dns.DNS.Q(name=name, type=1)])
        a = dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=60, rdata=b"\xc0\x00\x02\x01")
        rq = [dpkt.dns.DNS.Q(name=ans_name or name, type=1)]
        return bytes(q), bytes(dpkt.dns.DNS(id=ident, op=0x8180, qd=rq, an=[a]))

    for ident, name in ((i, f"a{i}.example") for i in range(1, 36)):  # past the 64 limit
        q, r = qr(ident, name)
        frames += [_dns_frame("10.0.0.1", 5000, "10.0.0.53", 53, q)]
        frames += [_dns_frame("10.0.0.53", 53, "10.0.0.1", 5000, r)]
    q, r = qr(103, "b.example")
    frames += [_dns_frame("10.0.0.2", 5001, "10.0.0.53", 53, q)]
    frames += [_dns_frame("10.0.0.53", 53, "10.0.0.2", 5001, r)]
    q, r = qr(4, "c.example", ans_name="other.example")
    frames += [_dns_frame("10.0.0.3", 5002, "10.0.0.53", 53, q)]
    frames += [_dns_frame("10.0.0.53", 53, "10.0.0.3", 5002, r)]
    q, _ = qr(5, "d.example")
    frames += [_dns_frame("10.0.0.4", 5003, "10.0.0.53", 53, q)]
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=1_700_000_000 + i * 0.01)


def _replay_rows(pcap: Path, data: Path, max_packets: int) -> tuple[list[str], list[str]]:
    import json

    from appliance.policy.snapshot import Snapshot
    from capture.flow.table import FlowConfig
    from capture.pipeline import Pipeline
    from capture.replay import replay
    from store.metadata import read_stream
    from store.paths import DataPaths

    snap = Snapshot.build()
    pipe = Pipeline(
        paths=DataPaths(data),
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: snap,
        internal_networks=["10.0.0.0/8"],
        flow_config=FlowConfig(seed=5),
    )
    replay([pcap], pipe, max_packets=max_packets)
    pipe.close()

    def rows(stream: str) -> list[str]:
        t = read_stream(DataPaths(data), stream)
        # uids are random draws in flow-creation order, which depends on the batching
        return sorted(
            json.dumps({k: v for k, v in r.items() if k != "uid"}, sort_keys=True, default=str)
            for r in t.to_pylist()
        )

    return rows("dns"), rows("flow")


def test_query_answer_pairs_give_the_same_rows_as_one_message_at_a_time(tmp_path: Path) -> None:
    """Batches of one packet (every message through the parser state), of two (pairs read
    at once, then more of the same flow) and of all: identical `dns` and `flow` rows."""
    pcap = tmp_path / "dns.pcap"
    _dns_capture(pcap)
    one = _replay_rows(pcap, tmp_path / "one", 1)
    assert len(one[0]) == 32 + 4  # A: 32 answered; b; c: query and answer apart; d alone
    for n in (2, 3, 65536):
        assert _replay_rows(pcap, tmp_path / f"n{n}", n) == one, n

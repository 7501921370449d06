"""The fast path's per-slot arrays (`AppFeed`: server name or Host, method, ServerHello
version per flow slot, replacing a `FastMeta` object per flow) give each flow its own heads:
a slot reused by a later flow never shows the earlier flow's name, method or version. Flows
one after another, fed in batches of a few packets so that ended flows' slots are reused, as
`capture.pipeline.Pipeline` feeds them (the flow rows of real captures are pinned by the
golden rows and the Zeek agreement)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import dpkt
import numpy as np

from capture.app import AppFeed
from capture.decode import Decoder
from capture.flow import FlowConfig, FlowTable
from capture.read import open_capture

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 9])


def _client_hello(name: bytes) -> bytes:
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _server_hello(version: int) -> bytes:
    ext = struct.pack("!HHH", 43, 2, version)
    body = b"\x03\x03" + b"\x22" * 32 + b"\x00" + b"\x13\x01" + b"\x00"
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


def _tcp(sport: int, dport: int, flags: int, seq: int, ack: int, data: bytes, up: bool) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    t.off = 5
    src, dst = (CLIENT, SERVER) if up else (SERVER, CLIENT)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=t, ttl=64)
    ip.len = 20 + len(bytes(t))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def _flow(
    t0: float, sport: int, dport: int, first: bytes, reply: bytes
) -> list[tuple[float, bytes]]:
    S, A, P, F = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    c, s = 1000, 5000
    out = [
        _tcp(sport, dport, S, c, 0, b"", True),
        _tcp(dport, sport, S | A, s, c + 1, b"", False),
        _tcp(sport, dport, A, c + 1, s + 1, b"", True),
        _tcp(sport, dport, P | A, c + 1, s + 1, first, True),
        _tcp(dport, sport, P | A, s + 1, c + 1 + len(first), reply, False),
        _tcp(sport, dport, F | A, c + 1 + len(first), s + 1 + len(reply), b"", True),
        _tcp(dport, sport, F | A, s + 1 + len(reply), c + 2 + len(first), b"", False),
    ]
    return [(t0 + i * 0.01, f) for i, f in enumerate(out)]


FLOWS: list[tuple[int, int, bytes, bytes, dict[str, Any]]] = [
    (40001, 443, _client_hello(b"Upper.Example.COM"), _server_hello(0x0304),
     {"service": "ssl", "server_name": "upper.example.com", "tls_version": "TLSv13"}),
    (40002, 9000, b"\x00\x01binary", b"\x00\x02",  # nothing read: no heads
     {}),
    (40003, 80, b"GET /x HTTP/1.1\r\nHost: Web.Example:8080\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
     {"service": "http", "http_host": "Web.Example", "http_method": "GET"}),
    (40004, 443, _client_hello(b"b.example\x00"), b"\x17\x03\x03\x00\x01x",  # not a ServerHello
     {"service": "ssl", "server_name": "b.example\x00"}),
    (40005, 9000, b"\x00\x01binary", b"\x00\x02", {}),
    (40006, 80, b"POST / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",  # no Host
     {"service": "http", "http_method": "POST"}),
]  # fmt: skip


def test_reused_slots_show_only_their_own_flow_heads(tmp_path: Path) -> None:
    frames: list[tuple[float, bytes]] = []
    for i, (sp, dp, first, reply, _) in enumerate(FLOWS):
        frames += _flow(1_700_000_000.0 + i * 400.0, sp, dp, first, reply)  # past the TCP timeout
    path = tmp_path / "heads.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, frame in frames:
            w.writepkt(frame, ts)
    table, appf, dec = FlowTable(FlowConfig(seed=3)), AppFeed(), Decoder()
    rows: dict[int, dict[str, Any]] = {}
    slots_used: list[int] = []

    def end(chunks: Any) -> None:
        for cols in chunks:
            slots = np.asarray(cols["slot"], np.int64)
            meta = appf.end_flows(table.uids, slots)
            for i, port in enumerate(np.asarray(cols["orig_p"]).tolist()):
                rows[port] = {k: v[i] for k, v in meta.items() if v[i] is not None}
                slots_used.append(int(slots[i]))

    with open_capture(path) as reader:
        for raw in reader.batches(3):  # a few packets a batch: ended flows' slots are reused
            b = dec.decode(raw)
            end(table.sweep(b))
            assign, ended = table.add(b)
            appf.grow(table.capacity)
            new = assign.new_slots
            appf.new_flows(new, table.orig_p[new], table.resp_p[new])
            appf.feed(b, assign.pkt, assign.slot, assign.is_orig, table.uids)
            end(ended)
    end(table.end_all())
    assert len(set(slots_used)) < len(FLOWS)  # slots were reused: the point of the test
    assert rows == {sp: want for sp, _, _, _, want in FLOWS}

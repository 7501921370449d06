"""Flows Zeek logs that we used to drop or flatten: unknown IP protocols, VN-Tag, nested tunnels.

Zeek cannot be installed here, so the EXPECTED rows below are DERIVED BY HAND from Zeek's
documented behaviour, its source and its public test baselines (zeek/zeek on GitHub), not
produced by running Zeek:

- Unknown IP protocols (ESP, SCTP, OSPF, IGMP, GRE that is not a tunnel, protocol 253):
  `UnknownIPTransportAnalyzer::InitConnKey` (src/packet_analysis/protocol/
  unknown_ip_transport/UnknownIPTransport.cc) keys the connection on (src, 0, dst, 0, proto):
  ports 0, one connection per address pair and protocol (two SCTP associations between the
  same hosts are one row); `UnknownIPSessionAdapter` keeps no endpoint sizes, so orig_bytes and
  resp_bytes are 0 ('-' at zero duration), conn_state OTH, history empty; conn.log's `proto` is
  `unknown_transport` and `ip_proto` the protocol number (base/protocols/conn/main.zeek,
  `c$conn$ip_proto = c$id$proto`). A public Zeek run on IGMP logs exactly this shape
  (`0 224.0.0.22 0 unknown_transport - 0.835910 0 0 OTH F T 0 - 4 160 0 0 - 2`).
- VN-Tag: Zeek's VNTag analyzer skips 6 bytes and dispatches on the EtherType at offset 4.
  Baseline testing/btest/Baseline/core.vntag/conn.log: three protocol-253 packets of 100 IP
  bytes behind VN-Tag are one unknown_transport connection, orig_pkts 3, orig_ip_bytes 300,
  OTH (that older baseline predates the port-0 key above and shows the protocol as port).
- Nested tunnels: `set_conn` adds only the innermost encapsulating connection's uid
  (`c$tunnel[|c$tunnel|-1]$uid`) to tunnel_parents, so parents chain level by level;
  `Tunnel::max_depth` defaults to 2 (init-bare.zeek, "Default: 2") and the VXLAN/Geneve
  analyzers stop with `exceeded_tunnel_max_depth` when `encap->Depth() >= max_depth`: a third
  tunnel is logged as its UDP connection and nothing inside it is.

Deliberate differences (ours, not Zeek's): GRE and IP-in-IP tunnels are flows here
(unknown_transport, ip_proto 47/4/41) that inner flows name in tunnel_parents; Zeek logs them
in tunnel.log and names the tunnel's uid. A GRE packet with a protocol type no decoder knows is
an unknown_transport flow here; Zeek logs a weird and no connection.
"""

# ruff: noqa: E501  (the EXPECTED table keeps one row per line)
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from capture_zeeklogs import our_flows, replay_tables

from capture.batch import STATUS, RawBatch
from capture.decode.decoder import Decoder, read_batches

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"  # made by pcaps/make_pcaps.py


class Want(NamedTuple):
    """One expected conn.log row (hand-derived, see module docstring); parent: index of the
    row this one names in tunnel_parents, or None."""

    orig: str
    resp: str
    proto: str
    ip_proto: int
    state: str
    history: str
    opk: int
    oipb: int
    rpk: int
    ripb: int
    obytes: int
    rbytes: int
    duration_s: float
    vlan: int | None = None
    parent: int | None = None


U, OTH = "unknown_transport", "OTH"
EXPECTED: dict[str, list[Want]] = {
    "unknown-transport.pcap": [
        Want("10.60.0.1:0", "10.60.0.2:0", U, 50, OTH, "", 2, 136, 1, 84, 0, 0, 2.002),  # ESP
        Want("10.60.0.3:0", "10.60.0.4:0", U, 132, OTH, "", 2, 104, 1, 52, 0, 0, 2.002),  # SCTP
        Want("10.60.0.5:0", "224.0.0.5:0", U, 89, OTH, "", 1, 64, 0, 0, 0, 0, 0.0),  # OSPF
        Want("10.60.0.6:0", "224.0.0.22:0", U, 2, OTH, "", 2, 64, 0, 0, 0, 0, 1.001),  # IGMP
        Want("10.60.0.7:0", "10.60.0.8:0", U, 47, OTH, "", 2, 96, 0, 0, 0, 0, 1.001),  # GRE
        Want("10.60.0.9:0", "10.60.0.10:0", U, 253, OTH, "", 1, 50, 0, 0, 0, 0, 0.0),
        Want("fd60::1:0", "fd60::2:0", U, 253, OTH, "", 1, 60, 0, 0, 0, 0, 0.0),
    ],
    "vntag.pcap": [
        Want("10.50.0.1:0", "10.50.0.2:0", U, 253, OTH, "", 3, 300, 0, 0, 0, 0, 2.002),
        Want("10.50.0.3:5353", "10.50.0.4:53", "udp", 17, "SF", "Dd", 1, 59, 1, 88, 31, 60, 1.001, 10),
    ],
    "nested-tunnels.pcap": [
        # VXLAN inside Geneve: Geneve's UDP <- VXLAN's UDP <- TCP
        Want("192.0.2.10:50000", "192.0.2.20:6081", "udp", 17, "S0", "D", 7, 998, 0, 0, 802, 0, 6.006),
        Want("10.70.0.1:50001", "10.70.0.2:4789", "udp", 17, "S0", "D", 7, 648, 0, 0, 452, 0, 6.006, None, 0),
        Want("10.71.0.1:40000", "10.71.0.2:80", "tcp", 6, "SF", "ShADaFf", 4, 178, 3, 120, 18, 0, 6.006, None, 1),
        # GRE inside VXLAN, both directions through the same tunnels
        Want("192.0.2.30:4789", "192.0.2.40:4789", "udp", 17, "SF", "Dd", 1, 134, 1, 134, 106, 106, 1.001),
        Want("10.72.0.1:0", "10.72.0.2:0", U, 47, OTH, "", 1, 84, 1, 84, 0, 0, 1.001, None, 3),
        Want("10.73.0.1:5353", "10.73.0.2:53", "udp", 17, "SF", "Dd", 1, 60, 1, 60, 32, 32, 1.001, None, 4),
        # Geneve > VXLAN > VXLAN: the third tunnel is a UDP flow, the TCP SYN inside is not
        Want("192.0.2.50:50004", "192.0.2.60:6081", "udp", 17, "S0", "D", 1, 190, 0, 0, 162, 0, 0.0),
        Want("10.74.0.1:50005", "10.74.0.2:4789", "udp", 17, "S0", "D", 1, 140, 0, 0, 112, 0, 0.0, None, 6),
        Want("10.75.0.1:50006", "10.75.0.2:4789", "udp", 17, "S0", "D", 1, 90, 0, 0, 62, 0, 0.0, None, 7),
    ],
}  # fmt: skip


def _ep(h: str, p: int) -> str:
    return f"{h}:{p}"


def _as_want(r: dict[str, Any], parent: int | None) -> Want:
    return Want(
        _ep(r["orig_h"], r["orig_p"]),
        _ep(r["resp_h"], r["resp_p"]),
        r["proto"],
        r["ip_proto"],
        r["conn_state"],
        r["history"],
        r["orig_pkts"],
        r["orig_ip_bytes"],
        r["resp_pkts"],
        r["resp_ip_bytes"],
        r["orig_bytes"],
        r["resp_bytes"],
        round(r["duration_ns"] / 1e9, 6),
        r["vlan"],
        parent,
    )


def observed(rows: list[dict[str, Any]], want: list[Want]) -> list[Want]:
    """Our rows in the shape of `want`, in its order (by endpoints), parents as indices."""
    order = {(w.orig, w.resp, w.proto): i for i, w in enumerate(want)}
    mine = sorted(
        rows,
        key=lambda r: order.get(
            (_ep(r["orig_h"], r["orig_p"]), _ep(r["resp_h"], r["resp_p"]), r["proto"]), 1 << 30
        ),
    )
    index = {r["uid"]: i for i, r in enumerate(mine)}
    out = []
    for r in mine:
        parents = [index.get(u, -1) for u in r["tunnel_parents"]]
        assert len(parents) <= 1, f"more than one tunnel parent: {r}"
        out.append(_as_want(r, parents[0] if parents else None))
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flows_match_rows_derived_from_zeek(name: str) -> None:
    want = EXPECTED[name]
    got = observed(our_flows(PCAPS / name), want)
    assert got == want


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The real pipeline (decode, flows, Parquet writer) on each capture, read back."""
    out = {}
    for name in EXPECTED:
        flow, _ = replay_tables([PCAPS / name], tmp_path_factory.mktemp(name))
        out[name] = flow.to_pylist()
    return out


def test_pipeline_writes_unknown_transport_rows_with_ip_proto(
    parquet: dict[str, list[dict[str, Any]]],
) -> None:
    rows = parquet["unknown-transport.pcap"]
    got = sorted((r["ip_proto"], r["proto"], r["client_port"], r["server_port"]) for r in rows)
    assert got == [(p, U, 0, 0) for p in (2, 47, 50, 89, 132, 253, 253)]
    sctp = next(r for r in rows if r["ip_proto"] == 132)
    assert (sctp["orig_pkts"], sctp["resp_pkts"], sctp["orig_bytes"]) == (2, 1, 0)
    vn = [r for r in parquet["vntag.pcap"] if r["proto"] == "udp"]
    assert [(r["vlan"], r["server_port"]) for r in vn] == [(10, 53)]


def test_pipeline_chains_tunnel_parents_level_by_level(
    parquet: dict[str, list[dict[str, Any]]],
) -> None:
    rows = {r["uid"]: r for r in parquet["nested-tunnels.pcap"]}
    by_client = {r["client_ip"]: r for r in rows.values()}
    assert "10.76.0.1" not in by_client  # beyond Zeek's max_depth: not decapsulated

    def chain(ip: str) -> list[str]:
        out, r = [], by_client[ip]
        while r["tunnel_parents"]:
            (uid,) = r["tunnel_parents"]
            r = rows[uid]
            out.append(r["client_ip"])
        return out

    assert chain("10.71.0.1") == ["10.70.0.1", "192.0.2.10"]
    assert chain("10.73.0.1") == ["10.72.0.1", "192.0.2.30"]
    assert chain("10.75.0.1") == ["10.74.0.1", "192.0.2.50"]


def _frames(*frames: bytes) -> RawBatch:
    return RawBatch.from_frames(list(frames), list(range(len(frames))))


ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def test_truncated_and_looping_vntags_are_counted_not_decoded() -> None:
    """A frame that ends inside the tag is truncated; a tag announcing tag after tag (a
    crafted loop) stops after a bounded number and is not IP; neither reads past its frame."""
    vn = b"\x89\x26"
    short = ETH + vn + b"\x80\x01\x00"  # 3 of the 6 tag bytes
    loop = ETH + vn + (b"\x80\x01\x00\x02" + vn) * 200 + b"\x80\x01\x00\x02\x08\x00"
    ip = bytes.fromhex("450000140000000040fd0000c0000201c0000202")  # proto 253, 20 bytes
    good = ETH + vn + b"\x80\x01\x00\x02\x08\x00" + ip
    dec = Decoder()
    b = dec.decode(_frames(short, loop, good))
    assert b.status.tolist() == [STATUS["truncated"], STATUS["non_ip"], 0]
    assert int(b.proto[2]) == 253 and int(b.l3_off[2] - b.frame_off[2]) == len(ETH) + 8


def test_select_keeps_the_middle_tunnel_of_the_packets_it_keeps() -> None:
    (b,) = list(read_batches(PCAPS / "nested-tunnels.pcap"))
    assert b.middle is not None
    assert b.middle.rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    sub = b.select(np.array([1, 8, 9]))
    assert sub.middle is not None and sub.middle.rows.tolist() == [0, 1, 2]
    assert sub.middle.proto.tolist() == [17, 47, 17]
    assert int(sub.middle.dport[2]) == 4789
    mask = np.zeros(len(b), bool)
    mask[7] = True
    sel = b.select(mask)
    assert sel.middle is not None and sel.middle.proto.tolist() == [47]


def test_unknown_transport_flow_ends_after_a_minute_idle() -> None:
    """Zeek's unknown_ip_inactivity_timeout is 1 min (init-bare.zeek): ESP packets 30 s apart
    are one connection, a packet after 70 s idle starts another."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from capture.decode.decoder import decode
    from capture.flow.rows import to_rows
    from capture.flow.table import FlowConfig, FlowTable

    frame = bytes(Ether() / IP(src="10.60.1.1", dst="10.60.1.2", proto=50) / Raw(b"\x00" * 16))
    t0 = 1_700_000_000 * 10**9
    ts = [t0, t0 + 30 * 10**9, t0 + 100 * 10**9]
    table = FlowTable(FlowConfig(seed=7))
    chunks = table.add(decode(RawBatch.from_frames([frame] * 3, ts)))[1] + table.flush()
    rows = to_rows(chunks)
    assert sorted((r["ts"] - t0, r["orig_pkts"], r["proto"]) for r in rows) == [
        (0, 2, U),
        (100 * 10**9, 1, U),
    ]

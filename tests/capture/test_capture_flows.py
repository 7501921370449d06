"""The flow table on hand-made packets: Zeek states, timeouts, reuse, the live-flow bound,
batch-size independence, uids and Community IDs."""

from __future__ import annotations

import socket
from typing import Any

import communityid
import dpkt
import pytest

from capture.batch import RawBatch
from capture.decode.decoder import Decoder
from capture.flow.keys import community_id
from capture.flow.rows import to_rows
from capture.flow.table import FlowConfig, FlowTable

S = 1_000_000_000
A, B, C = "10.0.0.1", "192.0.2.7", "10.0.0.2"


def eth(ip: Any) -> bytes:
    v6 = isinstance(ip, dpkt.ip6.IP6)
    return bytes(
        dpkt.ethernet.Ethernet(
            src=b"\x02" * 6, dst=b"\x04" * 6, data=ip, type=0x86DD if v6 else 0x0800
        )
    )


def ip4(src: str, dst: str, p: int, l4: Any) -> dpkt.ip.IP:
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, data=l4, ttl=64)


def tcp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    flags: int,
    seq: int,
    ack: int = 0,
    data: bytes = b"",
) -> bytes:
    return eth(
        ip4(
            src,
            dst,
            6,
            dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data),
        )
    )


def udp(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    return eth(ip4(src, dst, 17, dpkt.udp.UDP(sport=sport, dport=dport, data=data)))


SYN, ACK, FIN, RST, PSH = 2, 16, 1, 4, 8


def handshake_and_close(sport: int, t0: float) -> list[tuple[float, bytes]]:
    return [
        (t0, tcp(A, sport, B, 80, SYN, 100)),
        (t0 + 0.1, tcp(B, 80, A, sport, SYN | ACK, 500, 101)),
        (t0 + 0.2, tcp(A, sport, B, 80, ACK, 101, 501)),
        (t0 + 0.3, tcp(A, sport, B, 80, ACK | PSH, 101, 501, b"x" * 10)),
        (t0 + 0.4, tcp(B, 80, A, sport, ACK | PSH, 501, 111, b"y" * 30)),
        (t0 + 0.5, tcp(A, sport, B, 80, FIN | ACK, 111, 531)),
        (t0 + 0.6, tcp(B, 80, A, sport, FIN | ACK, 531, 112)),
        (t0 + 0.7, tcp(A, sport, B, 80, ACK, 112, 532)),
    ]


def run(
    pkts: list[tuple[float, bytes]], batch: int = 65536, flush: bool = True, **cfg: Any
) -> tuple[list[dict[str, Any]], FlowTable]:
    """The rows of `pkts` fed `batch` packets at a time, then flushed (unless not
    `flush`: then only the rows of the flows that ended while feeding)."""
    table = FlowTable(FlowConfig(seed=1, **cfg))
    dec = Decoder()
    chunks = []
    for i in range(0, len(pkts), batch):
        chunk = pkts[i : i + batch]
        raw = RawBatch.from_frames([f for _, f in chunk], [int(t * S) for t, _ in chunk])
        chunks += table.add(dec.decode(raw))[1]
    return to_rows(chunks + (table.flush() if flush else [])), table


def test_complete_tcp_connection_is_sf_with_sequence_space_bytes() -> None:
    rows, _ = run(handshake_and_close(40000, 1000.0))
    (r,) = rows
    assert (r["orig_h"], r["orig_p"], r["resp_h"], r["resp_p"], r["proto"]) == (
        A,
        40000,
        B,
        80,
        "tcp",
    )
    assert (r["conn_state"], r["history"]) == ("SF", "ShADdFf")  # B never sends a pure ACK
    assert (r["orig_bytes"], r["resp_bytes"], r["orig_pkts"], r["resp_pkts"]) == (10, 30, 5, 3)
    assert r["orig_ip_bytes"] == 5 * 40 + 10 and r["duration_ns"] == int(0.7 * S)


@pytest.mark.parametrize(
    ("pkts", "state", "history"),
    [
        pytest.param([tcp(A, 1, B, 80, SYN, 9)], "S0", "S", id="S0"),
        pytest.param(
            [tcp(A, 1, B, 80, SYN, 9), tcp(B, 80, A, 1, RST | ACK, 0, 10)], "REJ", "Sr", id="REJ"
        ),
        pytest.param([tcp(B, 80, A, 1, SYN | ACK, 5, 10)], "OTH", "^h", id="synack-flipped"),
        pytest.param(
            [
                tcp(A, 1, B, 80, SYN, 9),
                tcp(B, 80, A, 1, SYN | ACK, 5, 10),
                tcp(A, 1, B, 80, RST, 10),
            ],
            "RSTO",
            "ShR",
            id="RSTO",
        ),
        pytest.param(
            [tcp(A, 1, B, 80, SYN, 9), tcp(A, 1, B, 80, RST, 10)], "RSTOS0", "SR", id="RSTOS0"
        ),
        pytest.param(
            [tcp(A, 1, B, 80, ACK | PSH, 9, 5, b"abc"), tcp(B, 80, A, 1, ACK | PSH, 5, 12, b"de")],
            "OTH",
            "Dd",
            id="midstream",
        ),
    ],
)
def test_zeek_conn_states(pkts: list[bytes], state: str, history: str) -> None:
    rows, _ = run([(1.0 + i * 0.01, p) for i, p in enumerate(pkts)])
    assert len(rows) == 1
    assert (rows[0]["conn_state"], rows[0]["history"]) == (state, history)


def test_udp_from_a_server_port_is_flipped_and_sums_payload() -> None:
    rows, _ = run([(1.0, udp(B, 53, A, 5555, b"r" * 40)), (1.5, udp(A, 5555, B, 53, b"q" * 20))])
    (r,) = rows
    assert (r["orig_h"], r["orig_p"], r["history"], r["conn_state"]) == (A, 5555, "^dD", "SF")
    assert (r["orig_bytes"], r["resp_bytes"]) == (20, 40)


def test_idle_timeout_splits_a_flow_and_is_counted() -> None:
    pkts = [
        (0.0, udp(A, 5000, B, 9999, b"a")),
        (30.0, udp(A, 5000, B, 9999, b"b")),
        (200.0, udp(A, 5000, B, 9999, b"c")),
    ]
    rows, table = run(pkts)
    assert [r["orig_pkts"] for r in rows] == [2, 1]
    assert table.counters.ended_idle == 1 and table.counters.ended_flush == 1


def test_a_closed_connection_is_ended_by_the_sweep_after_the_close_delay() -> None:
    """Zeek deletes a connection tcp_close_delay (5 s) after it closed for good, so its row
    comes then and its slot is free: not after the 5-minute TCP inactivity timeout."""
    closed = handshake_and_close(40000, 10.0)  # both FINs: closed at 10.7 s
    half = [  # one FIN only: still open, waits for the inactivity timeout
        (10.0, tcp(C, 41000, B, 80, SYN, 100)),
        (10.1, tcp(B, 80, C, 41000, SYN | ACK, 500, 101)),
        (10.2, tcp(C, 41000, B, 80, FIN | ACK, 101, 501)),
    ]
    reset = [(10.0, tcp(C, 42000, B, 443, SYN, 9)), (10.1, tcp(B, 443, C, 42000, RST | ACK, 0, 10))]
    first = sorted(closed + half + reset, key=lambda p: p[0])
    later = [(t, udp(A, 5000, B, 9999, b"x")) for t in (14.0, 15.0, 17.0)]
    # one packet a batch, so that the sweep (at most once a second of capture time) runs
    rows, table = run(first + later[:2], batch=1, flush=False)
    assert rows == [] and len(table) == 4  # 15 s: within 5 s of the close and the reset
    rows, table = run(first + later, batch=1, flush=False)
    assert sorted((r["conn_state"], r["orig_p"]) for r in rows) == [("REJ", 42000), ("SF", 40000)]
    assert table.counters.ended_idle == 2 and len(table) == 2  # the half-closed one and UDP
    whole, _ = run(first + later)  # the same rows whatever ends them

    def fields(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("uid", "slot")}

    by_port = {r["orig_p"]: fields(r) for r in whole}
    assert [fields(r) for r in rows] == [by_port[r["orig_p"]] for r in rows]


def test_tcp_port_reuse_after_close_starts_a_new_flow() -> None:
    rows, table = run(handshake_and_close(40000, 10.0) + handshake_and_close(40000, 20.0))
    assert [r["conn_state"] for r in rows] == ["SF", "SF"]
    assert rows[0]["uid"] != rows[1]["uid"]
    assert table.counters.ended_reuse == 1


def test_live_flow_bound_evicts_oldest_and_counts_it() -> None:
    pkts = [(float(i), udp(A, 10000 + i, B, 9999, b"z")) for i in range(50)]
    rows, table = run(pkts, max_flows=10)
    assert len(rows) == 50  # evicted flows still become rows: nothing is lost silently
    assert table.counters.evicted == 40 and len(table) == 0
    assert sorted(r["orig_p"] for r in rows) == list(range(10000, 10050))


def test_batch_size_does_not_change_flows() -> None:
    pkts = handshake_and_close(40000, 1.0) + handshake_and_close(40001, 1.05)
    pkts += [(1.2 + i / 100, udp(C, 7000 + i % 3, B, 53, b"q" * i)) for i in range(12)]
    pkts.sort(key=lambda p: p[0])

    def key(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(v for k, v in r.items() if k not in ("uid", "slot")) for r in rows)

    whole, _ = run(pkts)
    assert key(whole) == key(run(pkts, batch=3)[0]) == key(run(pkts, batch=1)[0])


def test_uids_are_zeek_like_and_deterministic_under_a_seed() -> None:
    a, _ = run(handshake_and_close(40000, 1.0))
    b, _ = run(handshake_and_close(40000, 1.0))
    assert a[0]["uid"] == b[0]["uid"]
    assert a[0]["uid"].startswith("C") and len(a[0]["uid"]) == 17 and a[0]["uid"].isalnum()


@pytest.mark.parametrize(
    "tup",
    [
        (A, B, 6, 40000, 80),
        (B, A, 6, 80, 40000),
        (A, B, 17, 53, 53),
        ("2001:db8::1", "2001:db8::2", 17, 5353, 1),
        (A, B, 1, 8, 0),
        (B, A, 1, 0, 8),
        ("fe80::1", "ff02::2", 58, 133, 134),
        (A, B, 1, 3, 1),
        (A, B, 47, 0, 0),
    ],
)
def test_community_id_matches_the_reference_package(tup: tuple[Any, ...]) -> None:
    src, dst, proto, sp, dp = tup
    ref = communityid.CommunityID()
    if proto == 6:
        ft = communityid.FlowTuple.make_tcp(src, dst, sp, dp)
    elif proto == 17:
        ft = communityid.FlowTuple.make_udp(src, dst, sp, dp)
    elif proto in (1, 58):
        make = communityid.FlowTuple.make_icmp if proto == 1 else communityid.FlowTuple.make_icmp6
        code = 0 if (proto, sp) in ((1, 8), (1, 0)) else dp
        ft = make(src, dst, sp, code)
        import numpy as np

        from capture.flow.keys import icmp_counterpart

        dp = int(
            icmp_counterpart(
                np.array([proto], np.uint8), np.array([sp], np.uint16), np.array([code], np.uint16)
            )[0]
        )
    else:
        ft = communityid.FlowTuple(proto, src, dst)
    from capture.batch import addr_bytes

    assert community_id(addr_bytes(src), addr_bytes(dst), proto, sp, dp) == ref.calc(ft)


def test_icmp_echo_request_and_reply_are_one_flow() -> None:
    req = eth(
        ip4(
            A,
            B,
            1,
            dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping")),
        )
    )
    rep = eth(
        ip4(
            B,
            A,
            1,
            dpkt.icmp.ICMP(type=0, code=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping")),
        )
    )
    rows, _ = run([(1.0, req), (1.1, rep)])
    (r,) = rows
    assert (r["orig_h"], r["orig_p"], r["resp_p"], r["proto"]) == (A, 8, 0, "icmp")
    assert (r["orig_pkts"], r["resp_pkts"], r["conn_state"]) == (1, 1, "OTH")


def test_vectorised_community_ids_equal_the_per_flow_function() -> None:
    import numpy as np

    from capture.batch import addr_bytes
    from capture.flow.keys import community_ids

    flows = [
        (A, B, 6, 40000, 80),
        (B, A, 6, 80, 40000),
        (A, A, 17, 9, 5),
        ("2001:db8::1", "2001:db8::2", 17, 5353, 1),
        (A, B, 1, 8, 0),
        (A, B, 1, 3, 1),
        ("fe80::1", "ff02::2", 58, 133, 134),
        ("fe80::9", "fe80::1", 58, 1, 4),
        (A, B, 47, 0, 0),
    ]
    o = np.array([list(addr_bytes(f[0])) for f in flows], np.uint8)
    r = np.array([list(addr_bytes(f[1])) for f in flows], np.uint8)
    got = community_ids(
        o,
        r,
        np.array([f[2] for f in flows], np.uint8),
        np.array([f[3] for f in flows], np.uint16),
        np.array([f[4] for f in flows], np.uint16),
    )
    assert got == [community_id(addr_bytes(f[0]), addr_bytes(f[1]), *f[2:]) for f in flows]


def test_gaps_near_every_timeout_give_the_same_flows_whatever_the_batches() -> None:
    """Packets whose gaps fall just under and just over each timeout (DNS 10 s, UDP 60 s, a
    closed connection's 5 s): the same rows in one batch (each row against the one before it
    in its flow), in batches of 7 and one packet at a time (first packets against the table)."""
    import random

    rng = random.Random(5)
    pkts: list[tuple[float, bytes]] = []
    for i in range(24):
        t = 100.0 + i
        for _ in range(4):
            kind = i % 3
            if kind == 0:  # DNS: 10 s
                pkts.append((t, udp(A, 3000 + i, B, 53, b"q")))
                t += rng.choice([9.5, 10.5, 2.0])
            elif kind == 1:  # other UDP: 60 s
                pkts.append((t, udp(A, 4000 + i, B, 9999, b"u")))
                t += rng.choice([59.0, 61.0, 5.0])
            else:  # a closed connection, then a packet under or over the close delay
                pkts += handshake_and_close(5000 + i, t)
                t += 0.7 + rng.choice([4.0, 6.0])
                pkts.append((t, tcp(A, 5000 + i, B, 80, ACK, 112, 532)))
                t += 1.0
    pkts.sort(key=lambda p: p[0])

    def key(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(v for k, v in r.items() if k not in ("uid", "slot")) for r in rows)

    whole, _ = run(pkts)
    assert len(whole) > 40  # the gaps over a timeout split flows
    assert key(whole) == key(run(pkts, batch=7)[0]) == key(run(pkts, batch=1)[0])

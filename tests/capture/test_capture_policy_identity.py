"""Each packet is decided at its own timestamp: who held the address then (an IP lease that
passes to someone else in the middle of a flow) and whether the authorisation was still in
force (cancelled or expired in the middle of a capture). Packets of the subject are archived
under the authorisation, packets of the next holder never; the same with batches of 1 packet
and of 65536. The per-flow decision cache decides again only across such a boundary.

Real parts (tests/support/capture_policy.py): the CLI for leases, grants and cancellation
under the fake clock, `lbm capture replay`'s own pipeline run in-process with a chosen batch
size, the archive read back with the investigator's key.
"""

from __future__ import annotations

import json
import shutil
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dpkt
import pytest
from capture_policy import REF, grant, import_leases, packets, pcap_packets, records, run_replay
from lbm_testing import Lbm

from appliance.policy.identity import IdentityMap
from appliance.policy.identity_feed import OPEN_END, FeedRow
from store.metadata import read_stream
from store.paths import DataPaths

SERVER = "192.0.2.10"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
GRANT_AT = "2026-03-02T09:00:00Z"
LEASES_FROM = "2026-03-01T00:00:00Z"


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _frame(src: str, sport: int, dst: str, dport: int, flags: int, seq: int, data: bytes) -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=1, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _session(client: str, port: int, n: int) -> list[bytes]:
    """A TCP connection with an HTTP request first, then `n` more segments each way in turn
    (each carrying its own marker), one packet a second."""
    out = [
        _frame(client, port, SERVER, 80, 0x02, 100, b""),
        _frame(SERVER, 80, client, port, 0x12, 900, b""),
        _frame(client, port, SERVER, 80, 0x18, 101, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ]
    cs, ss = 101 + 35, 901
    for i in range(n):
        data = f"{client}-SEGMENT-{i:02d}".encode()
        if i % 2:
            out.append(_frame(client, port, SERVER, 80, 0x18, cs, data))
            cs += len(data)
        else:
            out.append(_frame(SERVER, 80, client, port, 0x18, ss, data))
            ss += len(data)
    return out


def _write(path: Path, flows: list[tuple[list[bytes], datetime]]) -> None:
    """Each flow's frames one second apart from its own start."""
    stamped = [
        (start + timedelta(seconds=i), f) for frames, start in flows for i, f in enumerate(frames)
    ]
    stamped.sort(key=lambda x: x[0])
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, nano=False)
        for at, f in stamped:
            w.writepkt(f, ts=at.timestamp())


def _of(pcap: Path, client: str, since: datetime | None, until: datetime | None) -> set[object]:
    """The capture's packets of `client`'s flow with since <= timestamp < until."""
    lo = round(since.timestamp() * 1e6) if since else -1
    hi = round(until.timestamp() * 1e6) if until else 2**62
    ip = socket.inet_aton(client)
    return {
        (ts, f)
        for ts, f in pcap_packets(pcap)
        if ip in (dpkt.ethernet.Ethernet(f).data.src, dpkt.ethernet.Ethernet(f).data.dst)
        and lo <= ts < hi
    }


@pytest.mark.parametrize("batch", [1, 65536])
def test_lease_handover_mid_flow(
    lbm: Lbm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """10.1.1.5 passes from the subject p100 to p200 in the middle of a flow, and 10.1.1.7
    from p300 to p100: only p100's packets, on either side of the handover, are archived."""
    handover = T0 + timedelta(seconds=5, microseconds=500_000)
    h = _iso(handover)
    import_leases(
        lbm,
        tmp_path,
        GRANT_AT,
        [
            ("p100", "10.1.1.5", LEASES_FROM, h),
            ("p200", "10.1.1.5", h, ""),
            ("p300", "10.1.1.7", LEASES_FROM, h),
            ("p100", "10.1.1.7", h, ""),
        ],
    )
    identity = grant(lbm, GRANT_AT)
    pcap = tmp_path / "handover.pcap"
    _write(pcap, [(_session("10.1.1.5", 41000, 9), T0), (_session("10.1.1.7", 42000, 9), T0)])

    pipe = run_replay(lbm.data_dir, [pcap], batch, monkeypatch, "2026-03-02T11:00:00Z")
    paths = DataPaths(lbm.data_dir)
    got = packets(records(paths, identity))  # every record is p100's
    before = _of(pcap, "10.1.1.5", None, handover)
    after = _of(pcap, "10.1.1.7", handover, None)
    assert len(before) == 6 and len(after) == 6
    assert sorted(got) == sorted(before | after)
    assert not set(got) & _of(pcap, "10.1.1.5", handover, None)  # p200's never
    assert not set(got) & _of(pcap, "10.1.1.7", None, handover)  # p300's never
    assert pipe.summary.archived_packets == 12
    # the cache decides again at the handover only, not at every packet (24 of them)
    assert pipe.gate is not None and pipe.gate.decisions <= 6

    # the flow rows keep the principal at each flow's first packet; refs say where content is
    rows = {r["client_ip"]: r for r in read_stream(paths, "flow").to_pylist()}
    assert rows["10.1.1.5"]["principal"] == "p100" and rows["10.1.1.5"]["refs"] == [REF]
    assert rows["10.1.1.7"]["principal"] == "p300" and rows["10.1.1.7"]["refs"] == [REF]


def test_cancellation_mid_capture_stops_archiving_at_that_instant(
    lbm: Lbm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_leases(lbm, tmp_path, GRANT_AT, [("p100", "10.1.1.5", LEASES_FROM, "")])
    identity = grant(lbm, GRANT_AT)
    cancel = T0 + timedelta(seconds=5)
    lbm(
        "auth", "cancel", REF, "--reason", "no longer needed", check=True,
        env={"LBM_FAKE_NOW": _iso(cancel)},
    )  # fmt: skip
    pcap = tmp_path / "cancel.pcap"
    start = T0 + timedelta(microseconds=500_000)  # packets at T0+0.5 s, +1.5 s, ...
    _write(pcap, [(_session("10.1.1.5", 41000, 9), start)])
    for batch in (1, 65536):
        copy = tmp_path / f"batch{batch}"
        shutil.copytree(lbm.data_dir, copy)
        pipe = run_replay(copy, [pcap], batch, monkeypatch, "2026-03-02T11:00:00Z")
        got = packets(records(DataPaths(copy), identity))
        assert sorted(got) == sorted(_of(pcap, "10.1.1.5", None, cancel)), batch
        assert pipe.summary.archived_packets == 5


def test_expiry_mid_capture_stops_archiving_at_that_instant(
    lbm: Lbm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_leases(lbm, tmp_path, GRANT_AT, [("p100", "10.1.1.5", LEASES_FROM, "")])
    identity = grant(lbm, GRANT_AT)
    shown = json.loads(lbm("auth", "show", REF, "--json", check=True).stdout)
    expiry = datetime.fromisoformat(shown["expiry"])
    pcap = tmp_path / "expiry.pcap"
    start = expiry - timedelta(seconds=3, microseconds=500_000)  # 4 packets before expiry
    _write(pcap, [(_session("10.1.1.5", 41000, 9), start)])
    later = _iso(expiry + timedelta(hours=1))
    pipe = run_replay(lbm.data_dir, [pcap], 1, monkeypatch, later)
    got = packets(records(DataPaths(lbm.data_dir), identity))
    assert sorted(got) == sorted(_of(pcap, "10.1.1.5", None, expiry))
    assert pipe.summary.archived_packets == 4


def test_lease_window_around_an_instant() -> None:
    """`IdentityMap.resolve_ip_span`, which the cache relies on: the holder and the window
    [start, end) over which that answer holds, gaps and overlaps (nobody) included."""
    m = IdentityMap.build(
        [
            FeedRow(1, "p100", "ip", "10.1.1.5", 1_000, 2_000),
            FeedRow(2, "p200", "ip", "10.1.1.5", 2_000, 3_000),
            FeedRow(3, "p300", "ip", "10.1.1.5", 2_500, 4_000),  # overlaps p200: nobody
            FeedRow(4, "p400", "ip", "10.1.1.5", 5_000, OPEN_END),
        ]
    )

    def at(us: int) -> tuple[str | None, int, int]:
        return m.resolve_ip_span(
            "10.1.1.5", datetime.fromtimestamp(0, UTC) + timedelta(microseconds=us)
        )

    assert at(999) == (None, -OPEN_END, 1_000)
    assert at(1_000) == at(1_999) == ("p100", 1_000, 2_000)
    assert at(2_000) == at(2_499) == ("p200", 2_000, 2_500)
    assert at(2_500) == at(2_999) == (None, 2_500, 3_000)  # two holders: nobody
    assert at(3_000) == ("p300", 3_000, 4_000)
    assert at(4_000) == at(4_999) == (None, 4_000, 5_000)  # a gap
    assert at(6_000) == ("p400", 5_000, OPEN_END)
    assert m.resolve_ip_span("10.9.9.9", 1.0) == (None, -OPEN_END, OPEN_END)

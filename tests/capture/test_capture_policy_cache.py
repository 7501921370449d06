"""The per-flow decision cache (`capture.subjects.gate`) gives, for every packet, exactly what
`decide`
gives at the packet's own instant with the principal holding the address then: a hypothesis
property over random lease histories (handovers mid-flow, gaps, conflicts), random
authorisation histories (start, expiry, cancellation, several per subject) and random batch
cuts, through the real pipeline (flow table, application metadata, gate). Only the recorder at
the end is a collector, so the property reads what would be archived without keys."""

from __future__ import annotations

import socket
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.policy.decide import decide
from appliance.policy.identity import IdentityMap
from appliance.policy.identity_feed import OPEN_END, FeedRow
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    Channel,
    EventKind,
    HistoryEvent,
    Officer,
    Purpose,
    Rank,
)
from appliance.policy.snapshot import Snapshot
from capture.pipeline import Pipeline
from capture.replay import replay
from capture.subjects.gate import ArchiveGate
from capture.subjects.recorder import SubjectRecorder
from store.paths import DataPaths

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SPAN_MS = 20_000  # the capture lasts 20 s
CLIENTS = ("10.1.1.5", "10.1.1.6")
PRINCIPALS = ("p100", "p101", "p200")
SERVER = "192.0.2.10"
HOPS = Officer("p900", "Pat Hops", "head_of_professional_standards", Rank.SUPERINTENDENT)


class Collector(SubjectRecorder):
    """What the gate hands over for archiving, per packet; nothing written."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.got: list[tuple[int, bytes, str, tuple[str, ...]]] = []

    def packet(
        self,
        uid: str,
        principal: str,
        refs: tuple[str, ...],
        at: datetime,
        linktype: int,
        ts_ns: int,
        frame: bytes,
        wire_len: int,
    ) -> None:
        self.got.append((ts_ns // 1000, frame, principal, tuple(sorted(refs))))

    def not_covered(self, uid: str) -> None:
        pass

    def end(self, uid: str) -> tuple[list[str], list[str]] | None:
        return None


def _at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def _us(ms: int) -> int:
    return round(_at(ms).timestamp() * 1_000_000)


def _auth(ref: str, subject: str, start: int, length: int, cancel: int | None) -> Authorisation:
    app = Application(
        ref, subject, CaseType.CRIMINAL, (Purpose.ESTABLISHING_FACTS,), (Channel.PACKETS,),
        HOPS, "n", "p", "c", True, "", _at(start), ("inv1",),
    )  # fmt: skip
    history = [
        HistoryEvent(1, ref, EventKind.GRANT, _at(start), "t", HOPS, expiry=_at(start + length))
    ]
    if cancel is not None:
        history.append(HistoryEvent(2, ref, EventKind.CANCEL, _at(cancel), "t", text="done"))
    return Authorisation(app, "age1x", _at(start), tuple(history))


def _frame(client: str, port: int, out: bool, seq: int) -> bytes:
    src, dst = (client, SERVER) if out else (SERVER, client)
    sp, dp = (port, 80) if out else (80, port)
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" if seq == 0 else f"segment {seq}".encode()
    seg = dpkt.tcp.TCP(
        sport=sp,
        dport=dp,
        flags=0x18 if seq else 0x02,
        seq=1000 + seq * 100,
        data=data if seq else b"",
    )
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


lease = st.tuples(
    st.sampled_from(CLIENTS),
    st.sampled_from(PRINCIPALS),
    st.integers(-5_000, SPAN_MS),
    st.one_of(st.none(), st.integers(1, SPAN_MS)),
)
auth = st.tuples(
    st.sampled_from(PRINCIPALS[:2]),
    st.integers(-5_000, SPAN_MS),
    st.integers(1, SPAN_MS),
    st.one_of(st.none(), st.integers(-5_000, SPAN_MS + 5_000)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    leases=st.lists(lease, min_size=1, max_size=6),
    auths=st.lists(auth, min_size=1, max_size=3),
    gaps=st.lists(st.integers(1, 1_500), min_size=10, max_size=30),
    batch=st.integers(1, 12),
)
def test_cached_decisions_equal_decide_at_each_packet(
    leases: list[tuple[str, str, int, int | None]],
    auths: list[tuple[str, int, int, int | None]],
    gaps: list[int],
    batch: int,
) -> None:
    rows = [
        FeedRow(i + 1, p, "ip", ip, _us(a), OPEN_END if n is None else _us(a + n))
        for i, (ip, p, a, n) in enumerate(leases)
    ]
    identity = IdentityMap.build(rows)
    snap = Snapshot.build(
        [_auth(f"ref-{i}", s, a, n, c) for i, (s, a, n, c) in enumerate(auths)], identity
    )
    # two long flows, packets interleaved, `gaps` ms apart
    frames: list[tuple[int, bytes]] = []
    ms = 0
    for i, g in enumerate(gaps):
        ms += g
        client = CLIENTS[i % 2]
        frames.append((ms, _frame(client, 40000 + i % 2, i % 4 < 2, i // 2)))
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "c.pcap"
        with pcap.open("wb") as fh:
            w = dpkt.pcap.Writer(fh)
            for m, f in frames:
                w.writepkt(f, ts=_at(m).timestamp())
        pipe = Pipeline(
            paths=DataPaths(Path(tmp) / "data"),
            gateway="gw1",
            writer_name="replay",
            snapshot=lambda: snap,
            internal_networks=["10.0.0.0/8"],
        )
        rec = Collector()
        pipe.recorder = rec
        pipe.gate = ArchiveGate(rec, pipe._flow_ip)
        replay([pcap], pipe, max_packets=batch, prefetch=0)
        pipe.close()

    expected = []
    for (m, f), i in zip(frames, range(len(frames)), strict=True):
        at = _at(m)
        principal = identity.resolve_ip(CLIENTS[i % 2], at)
        refs = decide(snap, principal, "packets", at).refs
        if refs:
            assert principal is not None
            expected.append((_us(m), f, principal, tuple(sorted(refs))))
    assert sorted(rec.got) == sorted(expected)
    # cheap: far fewer decisions than packets once flows are long
    assert pipe.gate.decisions <= 2 + 2 * (len(leases) + 3 * len(auths))


def test_identity_loaded_mid_capture_applies_from_then_on(tmp_path: Path) -> None:
    """A flow that began while no identity map was loaded: once one is (a new snapshot), the
    flow's address is looked up and its later packets are the subject's."""
    identity = IdentityMap.build([FeedRow(1, "p100", "ip", CLIENTS[0], _us(-1_000), OPEN_END)])
    auths = [_auth("ref-0", "p100", -1_000, SPAN_MS, None)]
    before, after = Snapshot.build(auths), Snapshot.build(auths, identity)
    frames = [(i * 100, _frame(CLIENTS[0], 40000, i % 2 == 0, i)) for i in range(10)]
    pcap = tmp_path / "c.pcap"
    with pcap.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for m, f in frames:
            w.writepkt(f, ts=_at(m).timestamp())
    fed = [0]
    pipe = Pipeline(
        paths=DataPaths(tmp_path / "data"),
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: after if fed[0] > 4 else before,  # from the 5th packet on
        internal_networks=["10.0.0.0/8"],
    )
    rec = Collector()
    pipe.recorder = rec
    pipe.gate = ArchiveGate(rec, pipe._flow_ip)
    feed = pipe.feed

    def counting(batch: Any, keys: Any = None) -> None:
        fed[0] += 1
        feed(batch, keys)

    pipe.feed = counting  # type: ignore[method-assign]
    replay([pcap], pipe, max_packets=1, prefetch=0)
    pipe.close()
    assert [ts for ts, *_ in rec.got] == [_us(m) for m, _f in frames[4:]]

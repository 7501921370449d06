"""The consumer side at scale: new flows resolve their IP lease by packed address (one dict
lookup, nothing when the identity map has no leases) with the same answers as the text
lookup, and a mass expiry of flows frees their slots for the same batch's new flows and
makes its rows a chunk at a time, with the same rows as before.

Real parts: the decoder on real frames, the flow table, `IdentityMap.build` from feed rows,
the pipeline with its real metadata writers (rows read back from Parquet).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.policy.identity import IdentityMap
from appliance.policy.identity_feed import OPEN_END, FeedRow
from appliance.policy.snapshot import Snapshot
from capture.batch import RawBatch
from capture.decode import Decoder
from capture.flow import keys as keys_mod
from capture.flow import table as flows_mod
from capture.flow.keys import KEY_SEED, canonical_hash, canonical_hash_np, group_keys
from capture.flow.rows import to_rows
from capture.flow.table import FlowConfig, FlowTable
from capture.pipeline import Pipeline
from store.metadata import read_stream
from store.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]

S = 1_000_000_000
V4 = b"\x00" * 10 + b"\xff\xff"


def packed(ip: str) -> bytes:
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    return V4 + socket.inet_aton(ip)


def udp_frame(src: str, sport: int, dst: str, dport: int) -> bytes:
    """Ethernet + IPv4 or IPv6 + UDP with 4 bytes of payload (checksums zero)."""
    payload = b"ping"
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if ":" in src:
        ip = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + packed(src) + packed(dst)
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + udp
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0)
    ip += socket.inet_aton(src) + socket.inet_aton(dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


# ---- identity by packed address ---------------------------------------------------------
LEASES = IdentityMap.build(
    [
        FeedRow(1, "p100", "ip", "10.1.1.5", 1_000, 2_000),
        FeedRow(2, "p200", "ip", "10.1.1.5", 2_000, 3_000),
        FeedRow(3, "p300", "ip", "2001:db8::5", 1_000, OPEN_END),
        FeedRow(4, "p400", "ip", "fd00::1:0:0:7", 0, OPEN_END),
    ]
)


@pytest.mark.parametrize(
    "ip",
    ["10.1.1.5", "2001:db8::5", "fd00::1:0:0:7", "10.1.1.6", "::ffff:10.1.1.5", "::10.1.1.5"],
)
@pytest.mark.parametrize("us", [0, 999, 1_000, 1_999, 2_000, 2_999, 3_000, 10**12])
def test_packed_lookup_answers_as_the_text_lookup(ip: str, us: int) -> None:
    """Same holder and window as `resolve_ip_span` on the address's text, for IPv4 (kept
    IPv4-mapped, as the capture path keeps it), IPv6, an address without leases, the
    IPv4-mapped spelling of a leased IPv4 address (the same address) and the IPv4-compatible
    one (`::10.1.1.5`, a different address: it must not take 10.1.1.5's holder)."""
    hits = LEASES.resolve_packed_spans([packed(ip)], [us])
    got = hits.get(0, (None, -OPEN_END, OPEN_END))
    assert got == LEASES.resolve_ip_span(ip, us / 1e6)
    if ip == "::10.1.1.5":
        assert got[0] is None


def test_packed_lookup_of_a_map_without_leases_is_empty() -> None:
    m = IdentityMap.build([FeedRow(1, "p100", "username", "alice")])
    assert not m.has_ip_leases and LEASES.has_ip_leases
    assert m.resolve_packed_spans([packed("10.1.1.5")] * 3, [1, 2, 3]) == {}
    with pytest.raises(ValueError, match="differ in length"):
        LEASES.resolve_packed_spans([packed("10.1.1.5")], [])


def test_pipeline_rows_carry_the_holder_at_each_flows_first_packet(tmp_path: Path) -> None:
    """Through the pipeline: the IPv4 address changes hands between two flows, the IPv6 one
    is leased, the external peer and an unleased internal address resolve to nobody."""
    t1, t2 = 1_500, 2_500  # microseconds: p100's lease, then p200's
    frames = [
        (t1, udp_frame("10.1.1.5", 5000, "192.0.2.1", 4000)),
        (t1 + 1, udp_frame("2001:db8::5", 5001, "2001:db8:ffff::1", 4000)),
        (t1 + 2, udp_frame("10.1.1.6", 5002, "192.0.2.1", 4000)),
        (t2, udp_frame("10.1.1.5", 5003, "192.0.2.1", 4000)),
    ]
    snap = Snapshot.build(identity=LEASES)
    paths = DataPaths(tmp_path)
    pipe = Pipeline(
        paths=paths,
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: snap,
        internal_networks=["10.0.0.0/8", "2001:db8::/64"],
        flow_config=FlowConfig(seed=1),
    )
    raw = RawBatch.from_frames([f for _, f in frames], [t * 1000 for t, _ in frames])
    pipe.feed(Decoder().decode(raw))
    pipe.end_source()
    pipe.close()
    rows = read_stream(paths, "flow").select(["client_port", "principal"]).to_pylist()
    assert {r["client_port"]: r["principal"] for r in rows} == {
        5000: "p100",
        5001: "p300",
        5002: None,
        5003: "p200",
    }


# ---- mass expiry --------------------------------------------------------------------------
def generation(first: int, n: int, t0: float) -> RawBatch:
    frames = [
        udp_frame(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 40000, "192.0.2.1", 53)
        for i in range(first, first + n)
    ]
    ts = [int((t0 + i * 1e-5) * S) for i in range(n)]
    return RawBatch.from_frames(frames, ts)


def test_a_generation_idling_out_frees_its_slots_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3,000 flows, then 120 s later (past the UDP timeout) 3,000 others: with the sweep made
    first (`Pipeline.feed`'s order) the second generation takes the first one's slots, so the
    table does not grow; the rows, in chunks of ROW_CHUNK, equal `add` alone's."""
    monkeypatch.setattr(flows_mod, "ROW_CHUNK", 1000)
    dec = Decoder()
    gens = [dec.decode(generation(0, 3000, 1000.0)), dec.decode(generation(3000, 3000, 1120.0))]

    def run(sweep_first: bool) -> tuple[list[dict[str, Any]], FlowTable, list[int]]:
        table = FlowTable(FlowConfig(seed=7))
        chunks: list[Any] = []
        sizes: list[int] = []
        for b in gens:
            if sweep_first:
                swept = list(table.sweep(b))
                sizes += [len(c["uid"]) for c in swept]
                chunks += swept
            chunks += table.add(b)[1]
        rows = [
            {k: v for k, v in r.items() if k != "slot"} for r in to_rows(chunks + table.flush())
        ]
        return rows, table, sizes  # slots differ: that is the point

    rows, table, sizes = run(sweep_first=True)
    old_rows, old_table, _ = run(sweep_first=False)
    assert rows == old_rows and len(rows) == 6000
    assert sizes == [1000, 1000, 1000]  # the first generation, a chunk at a time
    assert table._n == 3000 and old_table._n == 6000  # slots used: one generation, not two
    assert table.counters.ended_idle == 3000 and table.counters.created == 6000
    assert {r["uid"] for r in rows[:3000]}.isdisjoint(r["uid"] for r in rows[3000:])


def test_state_bytes_per_flow_counts_every_per_slot_array() -> None:
    """The printed figure follows the table: adding a per-slot array raises it."""
    t = FlowTable()
    base = t.state_bytes_per_flow()
    t.extra = np.zeros((t.capacity, 4), np.int64)  # type: ignore[attr-defined]
    assert t.state_bytes_per_flow() == base + 32
    assert base >= 8 * 2 + 16 * 2 + 176  # timestamps, addresses, the C TCP state at least


# ---- the C passes against their numpy definitions -------------------------------------------
def test_c_flow_keys_equal_the_numpy_definition_and_ignore_direction() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    src = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    dst = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    dst[::3] = src[::3]  # same address both ends: the ports decide the order
    src[::5, :8] = dst[::5, :8]  # equal first half: the second half decides
    sp = rng.integers(0, 65536, n, dtype=np.uint16)
    dp = rng.integers(0, 65536, n, dtype=np.uint16)
    dp[::7] = sp[::7]
    pr = rng.integers(0, 256, n, dtype=np.uint8)
    h = canonical_hash(src, dst, sp, dp, pr)
    assert (h == canonical_hash_np(src, dst, sp, dp, pr)).all()
    assert (h == canonical_hash(dst, src, dp, sp, pr)).all()
    assert len(np.unique(h)) > n * 0.99  # distinct tuples, distinct keys
    with pytest.raises(ValueError, match="different lengths"):
        canonical_hash(src[:-1], dst, sp, dp, pr)  # C would read past the shorter column


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:  # MurmurHash3's finaliser, as in flow_keys
    x ^= x >> 33
    x = x * 0xFF51AFD7ED558CCD & _M64
    x ^= x >> 33
    x = x * 0xC4CEB9FE1A85EC53 & _M64
    return x ^ (x >> 33)


def _unmix(y: int) -> int:  # its inverse: x ^= x >> 33 undoes itself, the products invert
    y ^= y >> 33
    y = y * pow(0xC4CEB9FE1A85EC53, -1, 1 << 64) & _M64
    y ^= y >> 33
    y = y * pow(0xFF51AFD7ED558CCD, -1, 1 << 64) & _M64
    return y ^ (y >> 33)


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def test_flow_keys_are_seeded_so_nobody_can_make_two_connections_share_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a secret seed the key can be inverted: from any connection of theirs, a host
    with an IPv6 /64 computes the interface identifier that gives a second connection (another
    port) the same key, and the table would count the second inside the first. Under this
    process's seed the two keys differ, and another process has another seed."""
    lo = bytes.fromhex("20010db8000000010000000000000001")  # lower address, both tuples
    hi0 = bytes.fromhex("20010db8000000ff")  # the /64 of the higher address
    hi1 = bytes.fromhex("0000000000000002")

    def ports(lp: int, hp: int) -> int:
        return (lp << 24) | (hp << 8) | 17  # UDP

    def h3(seed: int) -> int:  # the key before the last address word and the ports
        return _mix(_mix(_mix(_le(lo[:8]) ^ 0x9E3779B97F4A7C15 ^ seed) ^ _le(lo[8:])) ^ _le(hi0))

    key = _mix(_mix(h3(0) ^ _le(hi1)) ^ ports(40000, 443))
    forged = _unmix(_unmix(key) ^ ports(40001, 443)) ^ h3(0)  # the second tuple's last word
    src = np.frombuffer(lo * 2, np.uint8).reshape(2, 16)
    dst = np.frombuffer(hi0 + hi1 + hi0 + forged.to_bytes(8, "little"), np.uint8).reshape(2, 16)
    sp, dp = np.array([40000, 40001], np.uint16), np.array([443, 443], np.uint16)
    pr = np.array([17, 17], np.uint8)
    unseeded = canonical_hash(src, dst, sp, dp, pr, seed=0)
    assert unseeded[0] == unseeded[1] == key  # the attack works on an unseeded key
    assert (unseeded == canonical_hash_np(src, dst, sp, dp, pr, seed=0)).all()
    seeded = canonical_hash(src, dst, sp, dp, pr)
    assert seeded[0] != seeded[1]
    assert (seeded == canonical_hash_np(src, dst, sp, dp, pr)).all()
    other = subprocess.run(
        [sys.executable, "-c", "from capture.flow.keys import KEY_SEED; print(KEY_SEED)"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert int(other.stdout) != KEY_SEED  # a secret of each process
    # through the flow table: unseeded, the second connection would be hidden in the first
    text = [socket.inet_ntop(socket.AF_INET6, bytes(a)) for a in (src[0], dst[0], dst[1])]
    frames = [udp_frame(text[0], 40000, text[1], 443), udp_frame(text[0], 40001, text[2], 443)]
    batch = Decoder().decode(RawBatch.from_frames(frames, [1000 * S, 1001 * S]))

    def servers(seed: int) -> list[str]:
        monkeypatch.setattr(keys_mod, "KEY_SEED", seed)
        table = FlowTable(FlowConfig(seed=7))
        return sorted(r["resp_h"] for r in to_rows(table.add(batch)[1] + table.flush()))

    assert servers(0) == [text[1]]
    assert servers(KEY_SEED) == sorted(text[1:])


@pytest.mark.parametrize("shift", [0, 20, 40])
def test_c_grouping_equals_np_unique_even_for_keys_aimed_at_one_chain(shift: int) -> None:
    """Keys sharing their low bits (an attacker choosing tuples whose public hash collides
    there) still group exactly as `np.unique`, in sorted order with first rows and inverse."""
    rng = np.random.default_rng(shift)
    keys = rng.integers(0, 2**40, 5000, dtype=np.uint64) << np.uint64(shift)
    h = keys[rng.integers(0, keys.size, 60_000)]
    got = group_keys(h)
    want = np.unique(h, return_index=True, return_inverse=True)
    for g, w in zip(got, want, strict=True):
        assert (g == w).all()
    empty = group_keys(np.zeros(0, np.uint64))
    assert [e.size for e in empty] == [0, 0, 0]

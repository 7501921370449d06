"""The main thread's C passes and Arrow columns (issue 18, third round) give exactly what the
code they replace gave, and refuse bad indices instead of writing out of bounds.

- `flow_count` (packets, IP and payload bytes each way, last time, first direction) against
  the per-row definition and the numpy bincount formula it replaced;
- `tcp_process_rows` (rows read in place through an index) against `tcp_process` over
  gathered copies: the same state, history and stop index, a port reuse included;
- `addr_array` (C text into Arrow buffers) against `addr_texts` and Python's `ipaddress`;
- `community_id_array` (one C pass, `cid_flows`) against the per-flow `community_id` (itself
  pinned to the `communityid` package);
- `NetSet.contains` on 64-bit halves against the byte compare it replaced and `ipaddress`;
- the flow columns are Arrow of the `flow` schema's own types (no conversion at the writer);
- a slot reused after a tunnelled flow ended carries no tunnel parents into its next flow;
- uids written in C (`uid_text`) equal the numpy ones; slots are reused in the same order;
- the application feed's candidates and their ranks (`app_candidates`) equal the numpy
  formula (a stable sort by slot); each row's direction (`from_orig`) too;
- new flows made in C (`flow_create`) leave every slot array and the TCP state as the numpy
  creation did, batch after batch, evictions and tunnels included.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from capture.app.scan import candidates
from capture.decode import Decoder
from capture.flow import FlowConfig, FlowTable, NetSet, tcpstate, to_rows
from capture.flow.columns import swapped
from capture.flow.keys import (
    community_id,
    community_id_array,
    community_ids,
    likely_server,
    make_uid_bytes,
    make_uid_bytes_np,
)
from capture.flow.rows import addr_array, addr_texts, rows_for
from capture.read import open_capture
from store.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[2]
FB = tcpstate.ffi.from_buffer
LIB = tcpstate.lib


# ---- flow_count ----------------------------------------------------------------------------
def _counts_reference(
    slot: np.ndarray, orig: np.ndarray, cnt: np.ndarray, ipl: np.ndarray, pl: np.ndarray,
    ts: np.ndarray, nslots: int,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """The numpy formula `FlowTable._count` used before (bincounts and maximum.at)."""
    g = slot * 2 + (~orig).astype(np.int64)
    m = 2 * nslots
    pk = np.bincount(g, weights=cnt.astype(np.float64), minlength=m).astype(np.int64)
    ipw = np.where(cnt, ipl, pl).astype(np.float64)
    ib = np.bincount(g, weights=ipw, minlength=m).astype(np.int64)
    pb = np.bincount(g, weights=pl.astype(np.float64), minlength=m).astype(np.int64)
    last = np.full(nslots, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, slot, ts)
    fd = np.full(nslots, -1, np.int8)
    for s, o in zip(slot.tolist()[::-1], orig.tolist()[::-1], strict=True):
        fd[s] = 0 if o else 1  # the first row of each slot wins
    return pk.reshape(nslots, 2), ib.reshape(nslots, 2), pb.reshape(nslots, 2), last, fd


def _flow_count(
    slot: np.ndarray, orig: np.ndarray, cnt: np.ndarray, ipl: np.ndarray, pl: np.ndarray,
    ts: np.ndarray, nslots: int,
) -> tuple[int, tuple[np.ndarray, ...]]:  # fmt: skip
    pk, ib, pb = (np.zeros((nslots, 2), np.int64) for _ in range(3))
    last = np.full(nslots, np.iinfo(np.int64).min, np.int64)
    fd = np.full(nslots, -1, np.int8)
    r = LIB.flow_count(
        slot.size, FB("int64_t[]", slot), FB("uint8_t[]", orig.view(np.uint8)),
        FB("uint8_t[]", cnt.view(np.uint8)), FB("int64_t[]", ipl), FB("int64_t[]", pl),
        FB("int64_t[]", ts), nslots, FB("int64_t[]", pk), FB("int64_t[]", ib),
        FB("int64_t[]", pb), FB("int64_t[]", last), FB("int8_t[]", fd),
    )  # fmt: skip
    return int(r), (pk, ib, pb, last, fd)


@pytest.mark.parametrize("seed", range(4))
def test_flow_count_equals_the_numpy_formula_it_replaced(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, nslots = 5000, 300
    slot = rng.integers(0, nslots, n).astype(np.int64)
    orig = rng.random(n) < 0.6
    cnt = rng.random(n) < 0.9  # later fragments do not count as packets
    ipl = rng.integers(20, 1500, n).astype(np.int64)
    pl = rng.integers(0, 1460, n).astype(np.int64)
    ts = rng.integers(0, 10**12, n).astype(np.int64)  # out of order: last is the max
    r, got = _flow_count(slot, orig, cnt, ipl, pl, ts, nslots)
    assert r == 0
    for g, w in zip(got, _counts_reference(slot, orig, cnt, ipl, pl, ts, nslots), strict=True):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("bad", [-1, 300, 2**40])
def test_flow_count_refuses_a_slot_out_of_range_without_writing(bad: int) -> None:
    n, nslots = 10, 300
    slot = np.full(n, 5, np.int64)
    slot[3] = bad
    ones = np.ones(n, bool)
    vals = np.ones(n, np.int64)
    r, (pk, *_rest) = _flow_count(slot, ones, ones, vals, vals, vals, nslots)
    assert r == -1 and pk[5, 0] == 3  # rows before the bad one only; nothing past it


# ---- tcp_process_rows --------------------------------------------------------------------
def _tcp_packets(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    flags = rng.choice(np.array([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01], np.uint8), n)
    return {
        "flags": flags,
        "seq": rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32),
        "ack": rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32),
        "plen": rng.integers(0, 1400, n).astype(np.int64),
        "ts": np.sort(rng.integers(0, 60 * 10**9, n)).astype(np.int64),
    }


def _state_bytes(flows: object, nslots: int) -> bytes:
    return bytes(tcpstate.ffi.buffer(flows, tcpstate.ffi.sizeof("tcpflow") * nslots))


def _fresh(nslots: int) -> object:
    flows = tcpstate.ffi.new("tcpflow[]", nslots)
    for s in range(nslots):
        LIB.tcp_reset(tcpstate.ffi.addressof(flows[s]), s % 2)
    return flows


@pytest.mark.parametrize("seed", range(6))
def test_tcp_process_rows_equals_tcp_process_over_gathered_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ncols, nslots, base = 3000, 40, 17
    cols = _tcp_packets(rng, ncols)
    nrows = ncols - base
    slot = rng.integers(0, nslots, nrows).astype(np.int64)
    is_orig = rng.random(nrows) < 0.5
    rows = np.sort(rng.choice(nrows, 1500, replace=False)).astype(np.int64)
    delay = 5 * 10**9
    a, b = _fresh(nslots), _fresh(nslots)
    ia = base + rows
    want = LIB.tcp_process(
        a, rows.size, FB("int32_t[]", slot[rows].astype(np.int32)),
        FB("uint8_t[]", is_orig[rows].astype(np.uint8)), FB("uint8_t[]", cols["flags"][ia].copy()),
        FB("uint32_t[]", cols["seq"][ia].copy()), FB("uint32_t[]", cols["ack"][ia].copy()),
        FB("int32_t[]", cols["plen"][ia].astype(np.int32)), FB("int64_t[]", cols["ts"][ia].copy()),
        delay,
    )  # fmt: skip
    got = LIB.tcp_process_rows(
        b, nslots, rows.size, FB("int64_t[]", rows), nrows, base, ncols,
        FB("int64_t[]", slot), FB("uint8_t[]", is_orig.view(np.uint8)),
        FB("uint8_t[]", cols["flags"]), FB("uint32_t[]", cols["seq"]),
        FB("uint32_t[]", cols["ack"]), FB("int64_t[]", cols["plen"]),
        FB("int64_t[]", cols["ts"]), delay,
    )  # fmt: skip
    assert got == want
    assert _state_bytes(a, nslots) == _state_bytes(b, nslots)


@pytest.mark.parametrize(
    ("rows", "slot0", "base"),
    [([0, 9], 0, 0), ([0, -1], 0, 0), ([0, 1], 99, 0), ([0, 1], -3, 0), ([0, 1], 0, 9)],
)
def test_tcp_process_rows_refuses_indices_out_of_range(rows: list[int], slot0: int,
                                                       base: int) -> None:  # fmt: skip
    cols = _tcp_packets(np.random.default_rng(0), 10)
    slot = np.full(9, slot0, np.int64)
    ri = np.asarray(rows, np.int64)
    r = LIB.tcp_process_rows(
        _fresh(4), 4, ri.size, FB("int64_t[]", ri), 9, base, 10, FB("int64_t[]", slot),
        FB("uint8_t[]", np.ones(9, np.uint8)), FB("uint8_t[]", cols["flags"]),
        FB("uint32_t[]", cols["seq"]), FB("uint32_t[]", cols["ack"]),
        FB("int64_t[]", cols["plen"]), FB("int64_t[]", cols["ts"]), 5 * 10**9,
    )  # fmt: skip
    assert r == -2


# ---- text columns ------------------------------------------------------------------------
def _edge_addresses(rng: np.random.Generator) -> np.ndarray:
    fixed = [
        "1.2.3.4", "0.0.0.0", "255.255.255.255", "::", "::1", "::0.0.1.2", "::1.2.3.4",
        "::ffff:0:1.2.3.4", "::ffff:0:0", "2001:db8::1", "2001:db8:0:0:1::1", "fe80::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "1:0:0:2::", "0:0:0:0:0:1:0:0", "::a00:0",
    ]  # fmt: skip
    a = [np.frombuffer(ipaddress.ip_address(x).packed.rjust(16, b"\0"), np.uint8) for x in fixed]
    out = np.array(a, np.uint8)
    out[:3, 10:12] = 0xFF  # the IPv4 ones as IPv4-mapped
    rnd = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
    rnd[::3, :10], rnd[::3, 10:12] = 0, 0xFF  # IPv4-mapped
    rnd[1::3, 4:12] = 0  # zero runs of many lengths
    rnd[2::9, :12] = 0  # first 12 bytes zero
    rnd[5::9, 6:14] = 0
    return np.concatenate([out, rnd])


def test_addr_array_equals_addr_texts_and_ipaddress() -> None:
    a = _edge_addresses(np.random.default_rng(1))
    got = addr_array(a)
    assert got.type == pa.string()
    texts = got.to_pylist()
    assert texts == addr_texts(a)
    for t, raw in zip(texts, a, strict=True):  # what ipaddress reads back is the address
        back = ipaddress.ip_address(t)
        packed = back.packed if back.version == 6 else b"\0" * 10 + b"\xff\xff" + back.packed
        assert packed == raw.tobytes()
    assert addr_array(a[:0]).to_pylist() == []


@pytest.fixture(params=["portable", "sha-extensions"])
def sha1_path(request: pytest.FixtureRequest) -> Any:
    """The C SHA-1 of the Community IDs: the portable code, or the CPU's SHA extensions (the
    portable code again on a CPU without them); the choice made at import is put back."""
    before = tcpstate.lib.cid_sha_ext(-1)
    got = tcpstate.lib.cid_sha_ext(0 if request.param == "portable" else 1)
    yield got
    tcpstate.lib.cid_sha_ext(before)


def test_the_c_sha1_of_every_input_width_is_hashlibs(sha1_path: int) -> None:
    """`community_ids` on inputs of 0 to 119 bytes (one and two SHA-1 blocks, every place the
    padding and length can fall) against hashlib, on the path `sha1_path` chose."""
    import base64
    import hashlib

    ffi, lib = tcpstate.ffi, tcpstate.lib
    rng = np.random.default_rng(11)
    for width in range(120):
        rows = rng.integers(0, 256, (9, width), dtype=np.uint8)
        out = np.zeros(9 * 30, np.uint8)
        lib.community_ids(
            ffi.from_buffer("uint8_t[]", rows), 9, width, ffi.from_buffer("char[]", out)
        )
        got = [out[30 * i : 30 * i + 30].tobytes().decode() for i in range(9)]
        want = [
            "1:" + base64.b64encode(hashlib.sha1(row.tobytes()).digest()).decode() for row in rows
        ]
        assert got == want, width


@pytest.mark.parametrize("seed", [0, 1, 65535])
def test_community_id_array_equals_the_per_flow_definition(seed: int, sha1_path: int) -> None:
    rng = np.random.default_rng(2 + seed)
    k = 2000
    o, r = _edge_addresses(rng)[:k], _edge_addresses(rng)[::-1][:k]
    # a flow's two addresses are of one family (IPv4-mapped or not), as in one IP header
    v4 = (o[:, :12] == np.frombuffer(b"\0" * 10 + b"\xff\xff", np.uint8)).all(axis=1)
    r[v4, :10], r[v4, 10:12] = 0, 0xFF
    r[~v4 & (r[:, :12] == o[v4][0, :12]).all(axis=1), 0] = 0x20
    o[::7] = r[::7]  # the same address both ways: the ports decide the order
    proto = rng.choice(np.array([6, 17, 1, 58, 132, 47, 50], np.uint8), k)
    op = rng.integers(0, 65536, k).astype(np.uint16)
    rp = rng.integers(0, 65536, k).astype(np.uint16)
    op[proto == 1] %= 20  # ICMP types, one-way ones included
    op[::11] = 300  # ICMP types above 255 (capped), ports above too
    got = community_id_array(o, r, proto, op, rp, seed)
    want = [
        community_id(o[i].tobytes(), r[i].tobytes(), int(proto[i]), int(op[i]), int(rp[i]), seed)
        for i in range(k)
    ]
    assert got.type == pa.string() and got.to_pylist() == want
    assert community_ids(o, r, proto, op, rp, seed) == want


@pytest.mark.parametrize(
    "nets",
    [
        ["10.0.0.0/8", "192.168.1.0/24", "172.16.0.0/12"],
        ["fc00::/7", "2001:db8::/33", "2001:db8:0:1::/64", "::1/128", "1.2.3.4/32"],
        ["0.0.0.0/0"],
        ["::/0"],
        ["10.1.2.3/31", "::ffff:0:0/96", "fe80::/10"],
    ],
)
def test_netset_contains_equals_the_per_address_check(nets: list[str]) -> None:
    a = _edge_addresses(np.random.default_rng(3))
    a[::5, :10], a[::5, 10:12], a[::5, 12] = 0, 0xFF, 10  # some in 10/8
    ns = NetSet(nets)
    want = np.zeros(a.shape[0], bool)  # the 16-column compare it replaced
    for net, mask in zip(ns._nets, ns._masks, strict=True):
        want |= np.all((a & mask) == net, axis=1)
    got = ns.contains(a)
    assert got.tolist() == want.tolist() and got.sum() > 0
    if not any(n.startswith("::") for n in nets):  # (IPv6 nets holding IPv4-mapped ones)
        assert got.tolist() == ns.contains_text(addr_texts(a))


# ---- the flow columns --------------------------------------------------------------------
def _table_after(name: str) -> tuple[FlowTable, list[dict[str, object]]]:
    t = FlowTable(FlowConfig(seed=3))
    dec = Decoder()
    cols = []
    with open_capture(REPO / "pcaps" / name) as reader:
        for raw in reader.batches(64):
            cols.extend(t.add(dec.decode(raw))[1])
    return t, cols


def test_flow_text_columns_are_arrow_of_the_schema_types() -> None:
    t, _ = _table_after("nested-tunnels.pcap")
    cols = rows_for(t, t._kslot)
    schema = SCHEMAS["flow"]
    names = {"uid": "uid", "orig_h": "client_ip", "resp_h": "server_ip", "proto": "proto",
             "conn_state": "conn_state", "history": "history",
             "community_id": "community_id"}  # fmt: skip
    for col, field in names.items():
        arr = cols[col]
        assert isinstance(arr, pa.Array) and arr.type == schema.field(field).type, col
        arr.validate(full=True)  # offsets and UTF-8 checked
        assert arr.null_count == 0 and len(arr) == t._kslot.size


def test_a_reused_slot_carries_no_tunnel_parents() -> None:
    t, _ = _table_after("nested-tunnels.pcap")
    tunnelled = [r for r in to_rows(t.flush()) if r["tunnel_parents"]]
    assert tunnelled, "the capture has tunnelled flows"
    had = set(np.flatnonzero(t.has_parents).tolist())
    # the same table, a plain (untunnelled) capture: its new flows reuse the freed slots
    dec = Decoder()
    with open_capture(REPO / "pcaps" / "ipv6-ext-frag.pcap") as reader:
        for raw in reader.batches(64):
            t.add(dec.decode(raw))
    rows = to_rows(t.flush())
    reused = [r for r in rows if r["slot"] in had]
    assert reused and all(r["tunnel_parents"] == [] for r in rows)


# ---- flow creation -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 4096])
def test_uid_text_equals_the_numpy_uids(n: int) -> None:
    for seed in range(3):
        got = make_uid_bytes(np.random.default_rng(seed), n)
        want = make_uid_bytes_np(np.random.default_rng(seed), n)
        assert got.dtype == want.dtype == np.dtype("S17") and got.tolist() == want.tolist()


def test_uid_text_refuses_values_out_of_range() -> None:
    out = np.zeros(2, "S17")
    for bad in (-1, 62**8):
        r = np.array([[1, 2], [3, bad]], np.int64)
        assert LIB.uid_text(FB("int64_t[]", r), 2, FB("char[]", out.view(np.uint8))) == -1


def test_alloc_reuses_the_most_recently_freed_slots_first() -> None:
    t = FlowTable(FlowConfig(seed=1))
    t._free = [5, 9, 2]
    assert t._alloc(2).tolist() == [2, 9] and t._free == [5]
    n = t._n
    assert t._alloc(3).tolist() == [5, n, n + 1] and t._free == [] and t._n == n + 2
    big = t._alloc(t.capacity)  # grows the table
    assert big.tolist() == list(range(n + 2, n + 2 + big.size)) and t.capacity > big.size


# ---- the application feed's candidates ---------------------------------------------------
def _candidates_reference(
    cap: np.ndarray, frag: np.ndarray, pkt: np.ndarray, slot: np.ndarray, budget: np.ndarray
) -> tuple[list[int], list[int]]:
    """The numpy formula `AppFeed.feed` used before (a stable sort by slot)."""
    has = (cap[pkt] > 0) & (budget[slot] > 0) & (frag[pkt] <= 1)
    idx = np.flatnonzero(has)
    if idx.size == 0:
        return [], []
    sl = slot[idx]
    order = np.argsort(sl, kind="stable")
    ss = sl[order]
    start = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    rank = np.empty(idx.size, np.int64)
    rank[order] = np.arange(idx.size) - np.repeat(start, np.diff(np.r_[start, idx.size]))
    return idx.tolist(), rank.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_candidates_equal_the_numpy_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    npkt, nslots = 4000, 500
    b = SimpleNamespace(
        payload_cap=np.where(rng.random(npkt) < 0.6, rng.integers(1, 1400, npkt), 0).astype(
            np.int32
        ),
        frag=rng.choice(np.array([0, 0, 0, 1, 2, 3], np.uint8), npkt),
    )
    pkt = np.sort(rng.choice(npkt, 3500, replace=False)).astype(np.int64)
    pkt = np.concatenate([pkt, pkt[:300]])  # tunnelled packets: a row per connection
    slot = rng.integers(0, nslots, pkt.size).astype(np.int64)
    budget = np.where(rng.random(nslots) < 0.8, rng.integers(1, 16, nslots), 0).astype(np.int32)
    scratch = np.zeros(nslots, np.int32)
    idx, rank = candidates(b, pkt, slot, budget, scratch)  # type: ignore[arg-type]
    assert (idx.tolist(), rank.tolist()) == _candidates_reference(
        b.payload_cap, b.frag, pkt, slot, budget
    )
    assert not scratch.any()  # zero again for the next batch
    bad = slot.copy()
    bad[100] = nslots  # out of range: refused, scratch still zero
    with pytest.raises(IndexError):
        candidates(b, pkt, bad, budget, scratch)  # type: ignore[arg-type]
    assert not scratch.any()


# ---- direction of each row -----------------------------------------------------------------
def test_from_orig_equals_the_numpy_formula() -> None:
    rng = np.random.default_rng(9)
    n, nslots = 3000, 200
    src, dst = _edge_addresses(rng)[:n], _edge_addresses(rng)[::-1][:n]
    dst[::5] = src[::5]  # the same address both ways: the ports decide
    sp = rng.integers(0, 65536, n).astype(np.uint16)
    dp = rng.integers(0, 65536, n).astype(np.uint16)
    dp[::15] = sp[::15]
    slot = rng.integers(0, nslots, n).astype(np.int64)
    t = FlowTable(FlowConfig(seed=1))
    t.orig_lo[:nslots] = rng.random(nslots) < 0.5
    c = SimpleNamespace(src=src, dst=dst, sport=sp, dport=dp)
    got = t._from_orig(c, 0, n, slot)  # type: ignore[arg-type]
    want = (~swapped(src, dst, sp, dp)) == t.orig_lo[slot]
    assert got.tolist() == want.tolist()
    part = t._from_orig(c, 1000, 2500, slot[1000:2500])  # type: ignore[arg-type]
    assert part.tolist() == want[1000:2500].tolist()
    slot[7] = t.capacity  # past the storage
    with pytest.raises(IndexError):
        t._from_orig(c, 0, n, slot)  # type: ignore[arg-type]


def _create_reference(
    self: FlowTable, c: Any, rows: np.ndarray, hkeys: np.ndarray, ended: list[Any]
) -> np.ndarray:
    """`FlowTable._create` before `flow_create` (numpy)."""
    k = rows.size
    slots = self._alloc(k)
    proto = c.proto[rows]
    sp, dp = c.sport[rows], c.dport[rows]
    fl = c.flags[rows]
    tcp, udp = proto == 6, proto == 17
    ls_s, ls_d = likely_server(proto, sp), likely_server(proto, dp)
    partial = tcp & (((fl & 2) == 0) | ((fl & 16) != 0))
    flip_tcp = partial & ls_s & np.where(ls_d, ((fl & 2) == 0) & (sp < dp), True)
    flip = flip_tcp | (udp & ls_s & ~ls_d)
    src, dst = c.src[rows], c.dst[rows]
    self.orig_h[slots] = np.where(flip[:, None], dst, src)
    self.resp_h[slots] = np.where(flip[:, None], src, dst)
    self.orig_p[slots] = np.where(flip, dp, sp)
    self.resp_p[slots] = np.where(flip, sp, dp)
    self.proto[slots] = proto
    self.flipped[slots] = flip
    self.orig_lo[slots] = ~swapped(src, dst, sp, dp) != flip
    self.timeout[slots] = self._timeout_ns(proto, sp, dp)
    self.first_ts[slots] = self.last_ts[slots] = c.ts[rows]
    self.vlan[slots], self.inner_vlan[slots] = c.vlan[rows], c.inner_vlan[rows]
    self.pkts[slots] = self.ipb[slots] = self.pbytes[slots] = 0
    self.first_dir[slots] = -1
    self.live[slots] = True
    self.hkey[slots] = hkeys
    self.serial[slots] = np.arange(self._next_serial, self._next_serial + k)
    self._next_serial += k
    for s, f in zip(slots.tolist(), flip.tolist(), strict=True):
        LIB.tcp_reset(tcpstate.ffi.addressof(self.tcp[s]), int(f))
    self.uids.set(slots, make_uid_bytes(self._rng, k))
    had = slots[self.has_parents[slots]]
    for s in had.tolist():
        self.parents[s] = None
    self.has_parents[had] = False
    pos = np.searchsorted(self._keys, hkeys)
    self._keys = np.insert(self._keys, pos, hkeys)
    self._kslot = np.insert(self._kslot, pos, slots)
    self.counters.created += k
    self._created.append(slots)
    return slots


_SLOT_ARRAYS = ("orig_h", "resp_h", "orig_p", "resp_p", "proto", "flipped", "orig_lo",
                "timeout", "first_ts", "last_ts", "vlan", "inner_vlan", "pkts", "ipb", "pbytes",
                "first_dir", "live", "hkey", "serial", "uids")  # fmt: skip


def _run_tables(paths: list[Path], batch: int) -> list[tuple[Any, ...]]:
    """Per batch: every slot array and the TCP state, and at the end the rows."""
    t = FlowTable(FlowConfig(seed=11, max_flows=40))  # small: evictions too
    dec = Decoder()
    out: list[tuple[Any, ...]] = []
    for path in paths:
        with open_capture(path) as reader:
            for raw in reader.batches(batch):
                t.add(dec.decode(raw))
                n = t._n
                arrays = [
                    (getattr(t, a)._a if a == "uids" else getattr(t, a))[:n].tobytes()
                    for a in _SLOT_ARRAYS
                ]
                out.append((*arrays, _state_bytes(t.tcp, n)))
    out.append(tuple(to_rows(t.flush())))
    return out


def test_flow_create_equals_the_numpy_creation(corpus: Path) -> None:
    local = ("nested-tunnels.pcap", "gre.pcap", "vntag.pcap", "unknown-transport.pcap",
             "ipv6-ext-frag.pcap")  # fmt: skip
    paths = [REPO / "pcaps" / n for n in local]
    paths += [corpus / "pcaps" / "dev" / n for n in ("zeek__wikipedia.pcap",
                                                     "zeek__dns-txt-multiple.pcap")]  # fmt: skip
    got = _run_tables(paths, 16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowTable, "_create", _create_reference)
        want = _run_tables(paths, 16)
    assert len(got) == len(want) > 10
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"batch {i}"

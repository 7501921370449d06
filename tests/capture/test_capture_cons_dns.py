"""DNS query/answer pairs made as columns (`capture.app.dnspairs`) give exactly the `dns` and
`flow` rows, in the same order, that the code they replace gave (a row dict per pair made by
`AppMeta`, kept below as the reference): a generated capture of pairs and near-pairs
(another id, another name, two queries, an answer first, three messages, the same timestamp,
errors without answers, answer-only mDNS, bytes outside ASCII in a name, many answers) and
the corpus's DNS captures, replayed by `lbm capture replay` in this process both ways; and
pending `dns` blocks of both kinds keep their order when they become columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lbm_testing import Lbm

from capture.app import AppFeed, feed
from capture.app.dnspairs import PairData, pair_data, pairs_ok
from capture.app.dnsrows import DnsBlocks, FlowFields
from capture.app.dnsscan import _DH_ID, _DH_OP, _DH_QFROM, _DH_STATUS, QMAX, DnsScan, DnsView
from capture.app.meta import AppMeta
from store.metadata import read_stream
from store.paths import DataPaths

CORPUS_DNS = ("zeek__wikipedia.pcap", "zeek__dns-txt-multiple.pcap",
              "zeek__dns__mdns-no-assoc.pcap", "tcpdump__edns-opts.pcap",
              "zeek__ipv6-fragmented-dns.pcap")  # fmt: skip


def _msg(ident: int, name: bytes | str, *, qr: bool, rcode: int = 0, answers: int = 1,
         question: bool = True, qtype: int = dpkt.dns.DNS_A, opcode: int = 0) -> bytes:  # fmt: skip
    m = dpkt.dns.DNS(id=ident)
    m.qr = dpkt.dns.DNS_R if qr else dpkt.dns.DNS_Q
    m.opcode, m.rcode, m.rd = opcode, rcode, 1
    nm = name.decode("latin-1") if isinstance(name, bytes) else name
    m.qd = [dpkt.dns.DNS.Q(name=nm, type=qtype)] if question else []
    m.an = []
    if qr:
        for i in range(answers):
            rr = dpkt.dns.DNS.RR(name=nm, type=dpkt.dns.DNS_A, ttl=60 + i)
            rr.rdata = bytes([10, 0, i // 256, i % 256])
            m.an.append(rr)
    return bytes(m)


def _frame(client: int, sport: int, payload: bytes, to_server: bool) -> bytes:
    c, s = bytes([10, 1, client // 256, client % 256]), bytes([10, 9, 9, 9])
    src, dst = (c, s) if to_server else (s, c)
    sp, dp = (sport, 53) if to_server else (53, sport)
    udp = dpkt.udp.UDP(sport=sp, dport=dp, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=udp, ttl=64)
    ip.len = 20 + len(bytes(udp))
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def _capture(path: Path) -> None:
    """Flows of two (or more) datagrams each, many of them pairs, the rest near-pairs."""
    t = 1_700_000_000.0
    frames: list[tuple[float, bytes]] = []
    flow = 0

    def add(msgs: list[tuple[bytes, bool, float]]) -> None:
        nonlocal flow
        flow += 1
        for payload, to_server, dt in msgs:
            frames.append((t + flow * 0.001 + dt, _frame(flow, 20000 + flow, payload, to_server)))

    for i in range(400):
        name = f"host{i}.example.org"
        kind = i % 13
        q = _msg(i, name, qr=False)
        if kind == 0:
            add([(q, True, 0), (_msg(i + 1, name, qr=True), False, 0.002)])  # another id
        elif kind == 1:
            add([(q, True, 0), (_msg(i, "other.example", qr=True), False, 0.002)])
        elif kind == 2:
            add([(q, True, 0), (q, True, 0.001)])  # two queries
        elif kind == 3:
            add([(_msg(i, name, qr=True), False, 0), (q, True, 0.001)])  # answer first
        elif kind == 4:
            add([(q, True, 0), (_msg(i, name, qr=True), False, 0.002), (q, True, 0.003)])
        elif kind == 5:
            add([(q, True, 0), (_msg(i, name, qr=True), False, 0)])  # same instant: rtt null
        elif kind == 6:
            add([(q, True, 0), (_msg(i, name, qr=True, rcode=3, answers=0), False, 0.002)])
        elif kind == 7:
            add([(q, True, 0), (_msg(i, name, qr=True, rcode=9, answers=0), False, 0.002)])
        elif kind == 8:  # answers without a question (mDNS-like): names from the answers
            a = _msg(i, name, qr=False, question=False)
            add([(a, True, 0), (_msg(i, name, qr=True, question=False), False, 0.002)])
        elif kind == 9:
            raw = b"caf\xe9\xff." + name.encode()
            add([(_msg(i, raw, qr=False), True, 0), (_msg(i, raw, qr=True), False, 0.002)])
        elif kind == 10:
            add([(q, True, 0), (_msg(i, name, qr=True, answers=20), False, 0.002)])
        elif kind == 11:  # an unusual type and opcode
            q2 = _msg(i, name, qr=False, qtype=99, opcode=4)
            add([(q2, True, 0), (_msg(i, name, qr=True, qtype=99, opcode=4), False, 0.002)])
        else:
            add([(q, True, 0), (_msg(i, name, qr=True, answers=i % 3), False, 0.002)])
    frames.sort(key=lambda f: f[0])
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, frame in frames:
            w.writepkt(frame, ts)


def _dns_pairs_reference(
    self: AppFeed, b: Any, sl: Any, p_idx: Any, cand: Any, sc: DnsScan, uids: Any
) -> Any:
    """`AppFeed._dns_pairs` before the pairs became columns (one row dict per pair)."""
    views = [sc.view(i) for i in range(cand.size)]
    s_c = sl[cand]
    ok = (self._dns[s_c] == 1) & ~self._in_app[s_c] & (self._fast_kind[s_c] == 0)
    if not ok.any():
        return None
    slots, first, counts = np.unique(s_c, return_index=True, return_counts=True)
    pair = counts == 2
    pair &= ok[first]
    if not pair.any():
        return None
    order = np.argsort(s_c, kind="stable")
    start = np.searchsorted(s_c[order], slots[pair])
    i1, i2 = order[start], order[start + 1]
    keep = np.ones(cand.size, bool)
    ts = b.ts_ns
    settled = []
    for a, c, s in zip(i1.tolist(), i2.tolist(), slots[pair].tolist(), strict=True):
        q, r = views[a], views[c]
        if q is None or r is None or q.op >> 15 or not r.op >> 15 or q.id != r.id:
            continue
        if q.qname != r.qname:
            continue
        pq, pr = int(p_idx[cand[a]]), int(p_idx[cand[c]])
        row = AppMeta._dns_row(uids[s], s, False, int(ts[pq]), q)
        AppMeta._dns_answer(row, int(ts[pr]), r)
        self.app.dns_rows.append(row)
        keep[a] = keep[c] = False
        settled.append(s)
    if not settled:
        return None
    done = np.asarray(settled, np.int64)
    self._budget[done] -= 2
    self._fast_kind[done] = 3  # service "dns" (`feed.FAST_SERVICE`)
    return keep


def _rows(lbm: Lbm, files: list[Path]) -> dict[str, list[dict[str, Any]]]:
    res = lbm.inproc("capture", "replay", *map(str, files))
    assert res.returncode == 0, res.stdout + res.stderr
    out = {}
    for stream in ("dns", "flow"):
        rows = read_stream(DataPaths(lbm.data_dir), stream).to_pylist()
        uids = {r["uid"]: i for i, r in enumerate(rows)}  # uids are random: keep their order
        out[stream] = [{**r, "uid": uids[r["uid"]]} for r in rows]
    return out


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> list[dict[str, Any]]:
    base = tmp_path_factory.mktemp("cons-dns")
    pcap = base / "dns-pairs.pcap"
    _capture(pcap)
    files = [pcap, *(corpus / "pcaps" / "dev" / n for n in CORPUS_DNS)]
    out = []
    lbm = Lbm(base / "data-columns")
    lbm("init", check=True)
    made: list[int] = []
    with pytest.MonkeyPatch.context() as mp:

        def counted(*args: Any) -> PairData:
            pd = pair_data(*args)
            made.append(pd.size)
            return pd

        mp.setattr(feed, "pair_data", counted)
        out.append(_rows(lbm, files))
    assert sum(made) >= 200  # the pairs did go the columns' way
    lbm = Lbm(base / "data-reference")
    lbm("init", check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AppFeed, "_dns_pairs", _dns_pairs_reference)
        out.append(_rows(lbm, files))
    return out


def test_pairs_as_columns_give_the_same_dns_rows_in_the_same_order(
    both_ways: list[dict[str, Any]],
) -> None:
    by_columns, by_appmeta = both_ways
    assert len(by_columns["dns"]) >= 400
    assert by_columns["dns"] == by_appmeta["dns"]
    rows = by_columns["dns"]
    assert any(r["rtt"] is None for r in rows) and any(r["rejected"] for r in rows)
    assert any(r["qclass"] is None and r["qname"] for r in rows)  # names from answers
    assert any(r["rcode_name"] == "9" for r in rows) and max(len(r["answers"]) for r in rows) == 20


def test_pairs_as_columns_give_the_same_flow_rows(both_ways: list[dict[str, Any]]) -> None:
    by_columns, by_appmeta = both_ways
    assert by_columns["flow"] == by_appmeta["flow"]
    assert sum(r["service"] == "dns" for r in by_columns["flow"]) >= 400


def _fields(k: int, base: int) -> FlowFields:
    h = np.zeros((k, 16), np.uint8)
    h[:, 10:12] = 0xFF
    h[:, 15] = np.arange(base, base + k)
    return FlowFields(h, h[:, ::-1].copy(), np.full(k, 5353, np.uint16), np.full(k, 53, np.uint16),
                      np.full(k, 17, np.uint8), np.full(k, None, object))  # fmt: skip


def _pairs(k: int, base: int) -> PairData:
    hq = np.zeros((k, 8), np.int32)
    hq[:, 1] = np.arange(base, base + k)  # ids
    hq[:, 3] = 1  # the name is the question's
    hr = hq.copy()
    hr[:, 2] = 0x8180
    names = [f"q{base + i}" for i in range(k)]
    uids = [f"P{base + i}" for i in range(k)]
    ts = np.arange(k) * 7
    return PairData(hq, hr, names, [], np.zeros(0), ts, ts + 1, np.arange(k), uids)


def _dicts(k: int, base: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(k):
        v = DnsView(base + i, 0, f"d{base + i}", 1, 1, [], [])
        rows.append(AppMeta._dns_row(f"D{base + i}", i, False, 1000 * i, v))
    return rows


def test_pending_dns_blocks_keep_their_order_across_kinds() -> None:
    blocks = DnsBlocks()
    want = []
    for j, (kind, k) in enumerate([("p", 3), ("d", 2), ("d", 1), ("p", 4), ("d", 3), ("p", 1)]):
        meta = _pairs(k, 10 * j) if kind == "p" else _dicts(k, 10 * j)
        want += [f"{kind.upper()}{10 * j + i}" for i in range(k)]
        blocks.add(meta, _fields(k, 10 * j))
    cols = blocks.columns("eth9")
    assert cols is not None and blocks.rows == 0 and blocks.columns("eth9") is None
    assert cols["uid"].to_pylist() == want
    assert cols["qname"].to_pylist() == [u.lower().replace("p", "q") for u in want]
    assert cols["trans_id"].to_pylist() == [int(u[1:]) for u in want]  # ids follow their rows
    assert [ip.split(".")[-1] for ip in cols["client_ip"].to_pylist()] == [u[1:] for u in want]
    assert set(cols["interface"].to_pylist()) == {"eth9"}


_NAMES = [b"", b"a.example", b"A.example", b"a.exampl", b"\xffx", b"\xfex", b"\xc3\xa9"]


@settings(max_examples=300, deadline=None)
@example([(b"\xffx", True, b"\xfex", True, 0, True, 0)])  # alike as texts, not as bytes
@example([(b"a.example", True, b"a.exampl", True, 0, True, 0)])  # a name's prefix
@example([(b"", False, b"", False, 0, True, 0), (b"a.example", True, b"", False, 0, True, 0)])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_NAMES),  # the query's name
            st.booleans(),  # ... if it has one
            st.sampled_from(_NAMES),  # the answer's
            st.booleans(),
            st.integers(0, 2),  # 2: the ids differ
            st.booleans(),  # the answer is a response
            st.sampled_from([0, 0, 0, 1]),  # the answer's scan status
        ),
        min_size=1,
        max_size=40,
    )
)
def test_pairs_ok_holds_exactly_the_pairs_that_match_by_name(pairs: list[tuple[Any, ...]]) -> None:
    """`pairs_ok` (array code) against its definition, message by message through
    `DnsScan.name`: both read, a query and a response, the same id and the same name text
    (bytes outside ASCII decode alike: b"\\xff" and b"\\xfe" both as U+FFFD), or neither
    naming one; names of the pairs that hold, in order. Leftover bytes past a name's length
    (a scan's scratch) are not part of it."""
    n = 2 * len(pairs)
    hdr = np.zeros((n, 8), np.int32)
    qname = bytearray(n * QMAX)
    qlen = np.zeros(n, np.int32)
    for i, (na, ha, nb, hb, ids, resp_ok, status) in enumerate(pairs):
        for k, (name, has) in enumerate(((na, ha), (nb, hb))):
            m = 2 * i + k
            hdr[m, _DH_QFROM] = int(has)
            hdr[m, _DH_ID] = 7 if k == 0 else 7 + (ids == 2)
            hdr[m, _DH_OP] = (1 << 15) if (k == 1 and resp_ok) else 0
            hdr[m, _DH_STATUS] = status if k == 1 else 0
            qname[m * QMAX : m * QMAX + len(name)] = name
            qname[m * QMAX + len(name) : m * QMAX + len(name) + 3] = b"zy"[k : k + 1] * 3  # past it
            qlen[m] = len(name)
    sc = DnsScan(hdr, bytes(qname), qlen, *(np.zeros(0, t) for t in (np.int32, np.uint32)),
                 np.zeros(0, np.int32), np.zeros(0, np.int32), b"")  # fmt: skip
    q, r = np.arange(0, n, 2), np.arange(1, n, 2)
    ok, names = pairs_ok(sc, q, r)
    want_ok, want_names = [], []
    for a, c in zip(q.tolist(), r.tolist(), strict=True):
        hold = (
            hdr[a, _DH_STATUS] == 0 == hdr[c, _DH_STATUS]
            and not hdr[a, _DH_OP] >> 15 & 1
            and hdr[c, _DH_OP] >> 15 & 1
            and hdr[a, _DH_ID] == hdr[c, _DH_ID]
            and sc.name(a) == sc.name(c)
        )
        want_ok.append(bool(hold))
        if hold:
            want_names.append(sc.name(a))
    assert ok.tolist() == want_ok and names == want_names

"""The end-to-end rate's second round (issue 18): what changed must give the same answers.

- flow keys made on the reader's thread (`keys_of`) give the flow table exactly what it makes
  itself (tunnels, nested tunnels, fragments, a reused TCP port);
- the 16-bit radix orderings equal numpy's stable sort, ties and large slots included;
- a replay is not a daemon: it leaves a running daemon's run/policy.json alone;
- closing the pipeline publishes every row (no journal flush first) and leaves no journal
  frame behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lbm_testing import Lbm

from capture.decode import Decoder
from capture.flow import FlowConfig, FlowTable, keys_of
from capture.flow.order import first_of_each, stable_argsort
from capture.read import open_capture
from store.metadata import read_stream
from store.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]
LOCAL = ("nested-tunnels.pcap", "gre.pcap", "geneve.pcap", "ipv6-ext-frag.pcap")


def _batches(path: Path, max_packets: int) -> list:  # type: ignore[type-arg]
    dec = Decoder()
    with open_capture(path) as reader:
        return [dec.decode(raw) for raw in reader.batches(max_packets)]


def _table_rows(path: Path, premade: bool) -> list[tuple[object, ...]]:
    t = FlowTable(FlowConfig(seed=7))  # the same uids in both runs
    out: list[tuple[object, ...]] = []
    for b in _batches(path, 7):  # small batches: flows span batches, sweeps run
        keys = keys_of(b) if premade else None
        for cols in t.sweep(b, keys):
            out.extend(zip(*(cols[k] for k in ("orig_h", "orig_p", "history")), strict=True))
        assign, ended = t.add(b, keys)
        out.append(("assign", assign.pkt.tolist(), assign.slot.tolist(), assign.is_orig.tolist()))
        for cols in ended:
            out.extend(zip(*(cols[k] for k in ("orig_h", "orig_p", "history")), strict=True))
    last = ("orig_h", "orig_p", "resp_p", "history", "tunnel_parents")
    for cols in t.end_all():
        out.extend(zip(*(cols[k] for k in last), strict=True))
    return out


@pytest.mark.parametrize("name", LOCAL)
def test_keys_made_on_another_thread_give_the_same_flows(name: str) -> None:
    path = REPO / "pcaps" / name
    assert _table_rows(path, premade=True) == _table_rows(path, premade=False)


def test_premade_keys_for_a_port_reuse_and_the_first_timestamp(corpus: Path) -> None:
    path = corpus / "pcaps" / "dev" / "zeek__wikipedia.pcap"
    assert _table_rows(path, premade=True) == _table_rows(path, premade=False)
    for b in _batches(path, 50):
        k = keys_of(b)
        assert k.first_ts == (int(k.cols.ts[0]) if k.cols.ts.size else None)


def _udp_pcap(path: Path) -> Path:
    """UDP flows whose packets come back after an idle gap (over Zeek's 60 s) inside one
    batch: the table processes each batch in parts, the later ones from row > 0."""
    import dpkt

    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, (t, sport) in enumerate(
            [(0, 1000), (1, 1001), (2, 1000), (100, 1001), (101, 1000), (102, 1002)] * 3
        ):
            udp = dpkt.udp.UDP(sport=sport, dport=9999, data=b"x" * (i + 1))
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(
                src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=17, data=udp, ttl=64
            )
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(
                src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
            )
            w.writepkt(bytes(eth), ts=t + 200 * (i // 6))
    return path


def test_premade_keys_when_a_batch_is_processed_in_parts(tmp_path: Path) -> None:
    path = _udp_pcap(tmp_path / "gaps.pcap")
    rows = _table_rows(path, premade=True)
    assert rows == _table_rows(path, premade=False)
    assert sum(1 for r in rows if r[0] != "assign") >= 9  # the gaps did end flows


@pytest.mark.parametrize("hi", [1, 300, 65535, 65536, 200_000, 2**32 - 1, 2**32, 2**62])
@pytest.mark.parametrize("n", [0, 1, 255, 256, 5000])
def test_radix_order_is_numpys_stable_order(hi: int, n: int) -> None:
    rng = np.random.default_rng(hi + n)
    x = rng.integers(0, hi + 1, n, dtype=np.int64)
    x[: n // 3] = hi  # many ties, at the top of the range
    want = np.argsort(x, kind="stable")
    assert stable_argsort(x).tolist() == want.tolist()
    assert first_of_each(x).tolist() == np.unique(x, return_index=True)[1].tolist()
    neg = x - hi // 2  # negative values: numpy's own sort
    assert stable_argsort(neg).tolist() == np.argsort(neg, kind="stable").tolist()


def test_replay_leaves_a_daemons_policy_state_alone(lbm: Lbm, corpus: Path) -> None:
    assert lbm.inproc("init").returncode == 0
    state = lbm.data_dir / "run" / "policy.json"
    daemon = json.dumps({"state": "stale", "pid": 1, "writer": "capture-eth0"})
    state.write_text(daemon)
    pcap = corpus / "pcaps" / "dev" / "zeek__http__get.pcap"
    res = lbm("capture", "replay", str(pcap), "--json", check=True)
    assert json.loads(res.stdout)["flows"] == 1
    assert state.read_text() == daemon
    # close published the rows without journaling them first: none left in the journal
    assert read_stream(DataPaths(lbm.data_dir), "flow").num_rows == 1
    journal = lbm.data_dir / "journal" / "replay.journal"
    before = journal.stat().st_size
    res = lbm("capture", "replay", str(pcap), "--again", "--json", check=True)
    assert journal.stat().st_size == before
    assert read_stream(DataPaths(lbm.data_dir), "flow").num_rows == 2

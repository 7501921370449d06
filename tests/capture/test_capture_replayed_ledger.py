"""The replay ledger decides before the first row with a pre-key (size, first and last MiB)
and records the SHA-256 computed from what the replay reads (`FileHash`, tested in
test_capture_prod_filehash.py): the same large capture is still refused the second time, a
different one with the same first and last MiB is not, an earlier replay that never
finished refuses what it cannot be told apart from, one that could write no row does not
count, and entries written before the pre-key existed still count."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import time
from pathlib import Path

import dpkt
import pytest
from lbm_testing import Lbm

from store.metadata import read_stream
from store.paths import DataPaths

T0 = 1_700_000_000
PAYLOAD = 1000


@pytest.fixture(scope="module")
def lbm(tmp_path_factory: pytest.TempPathFactory) -> Lbm:
    runner = Lbm(tmp_path_factory.mktemp("ledger") / "data")
    runner("init", check=True)
    return runner


def _frame(flow: int, payload: bytes) -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000 + flow, dport=443, seq=1, flags=dpkt.tcp.TH_ACK, data=payload)
    ip = dpkt.ip.IP(
        src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=6, data=tcp
    )
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def _capture(path: Path, flows: int, middle: bytes = b"m", packets: int = 3000) -> Path:
    """About 3 MiB: `flows` flows; `middle` is the payload's first byte in the middle packet
    (outside the first and last MiB), so two files can differ only there."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(packets):
        body = (middle if i == packets // 2 else b"x") + b"y" * (PAYLOAD - 1)
        f = _frame(i % flows, body)
        out.append(struct.pack("<IIII", T0 + i // 100, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    assert packets < 3000 or path.stat().st_size > 3 << 20  # more than the pre-key reads
    return path


def _ledger(lbm: Lbm) -> list[dict[str, object]]:
    text = (DataPaths(lbm.data_dir).journal / "replayed.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


def _flows(lbm: Lbm) -> int:
    return int(read_stream(DataPaths(lbm.data_dir), "flow").num_rows)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_large_capture_is_refused_again_and_one_with_its_edges_is_not(
    lbm: Lbm, tmp_path: Path
) -> None:
    a = _capture(tmp_path / "a.pcap", flows=3)
    assert lbm.inproc("capture", "replay", str(a)).returncode == 0
    before = _flows(lbm)
    started, done = _ledger(lbm)[-2:]
    assert started["sha256"] is None and started["size"] == a.stat().st_size  # decided early
    assert done["run"] == started["run"] and done["sha256"] == _sha(a)  # hashed while read
    copy = tmp_path / "copy.pcap"
    copy.write_bytes(a.read_bytes())
    res = lbm.inproc("capture", "replay", str(copy))
    assert res.returncode == 1 and f"{copy}: already replayed" in res.stderr
    assert str(a) in res.stderr and _flows(lbm) == before  # no row added
    b = _capture(tmp_path / "b.pcap", flows=3, middle=b"M")  # same size, first and last MiB
    res = lbm.inproc("capture", "replay", "--json", str(b))
    assert res.returncode == 0 and json.loads(res.stdout)["flows"] == 3
    started, done = _ledger(lbm)[-2:]
    assert started["edges"] == _ledger(lbm)[-4]["edges"]  # a's edges...
    assert started["sha256"] == done["sha256"] == _sha(b) != _sha(a)  # ...so hashed first


def test_an_unfinished_replay_refuses_what_it_cannot_be_told_from(lbm: Lbm, tmp_path: Path) -> None:
    """A replay cut off before "done" may have written rows: the same file, and any with its
    size and edges, is refused (its SHA-256 was never recorded) until --again."""
    c = _capture(tmp_path / "c.pcap", flows=2, packets=3100)
    assert lbm.inproc("capture", "replay", str(c)).returncode == 0
    ledger = DataPaths(lbm.data_dir).journal / "replayed.jsonl"
    lines = ledger.read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "done"
    ledger.write_text("\n".join(lines[:-1]) + "\n")  # as if the process had been killed
    d = _capture(tmp_path / "d.pcap", flows=2, packets=3100, middle=b"D")
    for path in (c, d):
        res = lbm.inproc("capture", "replay", str(path))
        assert res.returncode == 1 and f"{path}: possibly already replayed" in res.stderr
        assert "--again" in res.stderr
    assert lbm.inproc("capture", "replay", "--again", str(d)).returncode == 0
    assert _ledger(lbm)[-1]["sha256"] == _sha(d)


def test_entries_from_before_the_pre_key_still_refuse(lbm: Lbm, tmp_path: Path) -> None:
    e = _capture(tmp_path / "e.pcap", flows=1, packets=3200)
    old = {"event": "started", "sha256": _sha(e), "size": e.stat().st_size, "file": "old.pcap"}
    ledger = DataPaths(lbm.data_dir).journal / "replayed.jsonl"
    with ledger.open("a") as fh:
        fh.write(json.dumps({**old, "at": "2026-01-01T00:00:00+00:00", "again": False}) + "\n")
    res = lbm.inproc("capture", "replay", str(e))
    assert res.returncode == 1 and "already replayed" in res.stderr and "old.pcap" in res.stderr


def test_a_skipped_record_does_not_change_the_recorded_hash(lbm: Lbm, tmp_path: Path) -> None:
    """A record above the limit is skipped by the reader, by seeking: the ledger's SHA-256 is
    still the whole file's (it is hashed apart from what the reader reads)."""
    frames = [_frame(0, b"a"), b"\x00" * (9 << 20), _frame(2, b"c")]
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    out += [struct.pack("<IIII", T0, 0, len(f), len(f)) + f for f in frames]
    big = tmp_path / "skip.pcap"
    big.write_bytes(b"".join(out))
    res = lbm.inproc("capture", "replay", "--json", str(big))
    summary = json.loads(res.stdout)
    assert res.returncode == 0 and summary["bad_packets"] == {"reader_oversize_record": 1}
    assert summary["files"][0]["sha256"] == _sha(big) == _ledger(lbm)[-1]["sha256"]


def test_json_says_when_the_first_batch_reached_the_pipeline(lbm: Lbm, tmp_path: Path) -> None:
    """`timing`: seconds from process start (here `LBM_T0`, the caller's clock) to the first
    batch in the pipeline and to the end, and the final flush and publication."""
    f = _capture(tmp_path / "t.pcap", flows=1, packets=10)
    t0 = time.time_ns()
    res = lbm.inproc("capture", "replay", "--json", str(f), env={"LBM_T0": str(t0)})
    timing = json.loads(res.stdout)["timing"]
    elapsed = (time.time_ns() - t0) / 1e9 + 0.0005  # the figures are rounded to the ms
    assert 0 < timing["first_batch_s"] <= timing["total_s"] <= elapsed
    assert 0 <= timing["close_s"] <= timing["total_s"]


def test_a_replay_that_could_write_no_row_does_not_count(lbm: Lbm, tmp_path: Path) -> None:
    """Another process holds the `replay` writer's journal (a concurrent replay): the metadata
    writers, opened at the first rows, fail; no row was written, so the run is recorded as
    aborted and the file is not refused afterwards."""
    g = _capture(tmp_path / "g.pcap", flows=2, packets=50)
    journal = DataPaths(lbm.data_dir).journal / "replay.journal"
    fd = os.open(journal, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = lbm.inproc("capture", "replay", str(g))
    finally:
        os.close(fd)
    assert res.returncode == 1 and "is locked" in res.stderr
    started, aborted = _ledger(lbm)[-2:]
    assert aborted == {**aborted, "event": "aborted", "run": started["run"]}
    res = lbm.inproc("capture", "replay", "--json", str(g))  # not refused: no --again needed
    assert res.returncode == 0 and json.loads(res.stdout)["flows"] == 2

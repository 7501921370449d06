"""`lbm capture replay` given hostile or repeated input, as a user runs it (real subprocess,
real files): a FIFO, device, directory or unopenable path in the list is refused with one line
naming it while the other files are processed (exit 1 at the end); a file already replayed into
the data dir is refused unless `--again` (no duplicated rows); an oversize record is skipped and
the packets after it are replayed; the summary is printed per file."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
from pathlib import Path

import dpkt
from lbm_testing import Lbm

from store.metadata import read_stream
from store.paths import DataPaths

T0 = 1_700_000_000


def _syn(i: int) -> bytes:
    """One TCP SYN from 10.0.0.1:(40000+i) to 10.0.0.2:80: one flow per frame."""
    tcp = dpkt.tcp.TCP(sport=40000 + i, dport=80, seq=1000, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(
        src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=6, data=tcp
    )
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)


def _pcap(path: Path, frames: list[bytes]) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", T0 + i, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def _flows(lbm: Lbm) -> int:
    return int(read_stream(DataPaths(lbm.data_dir), "flow").num_rows)


def test_unreadable_entries_are_refused_and_the_others_replayed(lbm: Lbm, tmp_path: Path) -> None:
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling.pcap"
    dangling.symlink_to(tmp_path / "gone.pcap")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "cap.sock"))
    good = _pcap(tmp_path / "good.pcap", [_syn(i) for i in range(3)])
    bad = {
        str(fifo): "a FIFO",
        "/dev/zero": "a character device",
        str(tmp_path): "a directory",
        str(dangling): "cannot open",
        str(tmp_path / "no-dir" / "x.pcap"): "cannot open",
        str(tmp_path / "cap.sock"): "a socket",
    }
    try:
        res = lbm("capture", "replay", *bad, str(good), "--json", timeout=60)  # FIFO: no hang
    finally:
        sock.close()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = res.stderr.strip().splitlines()
    assert len(errors) == len(bad), errors
    for line, (name, what) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"lbm: error: {name}: ") and what in line, line
    summary = json.loads(res.stdout)
    assert summary["flows"] == 3 == _flows(lbm)
    assert [f["status"] for f in summary["files"]] == ["failed"] * len(bad) + ["replayed"]
    ledger = DataPaths(lbm.data_dir).journal / "replayed.jsonl"
    assert [json.loads(x)["file"] for x in ledger.read_text().splitlines()] == [str(good)] * 2


def test_second_replay_of_the_same_capture_is_refused_unless_again(
    lbm: Lbm, tmp_path: Path
) -> None:
    """Identified by content: a renamed copy is refused too; --again replays it (and says
    the rows are duplicated); the record is mode 0600 and holds counts, no packet content."""
    first = _pcap(tmp_path / "a.pcap", [_syn(i) for i in range(4)])
    lbm("capture", "replay", str(first), check=True)
    assert _flows(lbm) == 4
    copy = tmp_path / "renamed.pcap"
    copy.write_bytes(first.read_bytes())
    other = _pcap(tmp_path / "b.pcap", [_syn(i) for i in range(10, 12)])
    for path in (first, copy):
        res = lbm("capture", "replay", str(path), str(other) if path == copy else str(path))
        assert res.returncode == 1
        line = res.stderr.strip().splitlines()[0]
        assert line.startswith(f"lbm: error: {path}: already replayed") and "--again" in line
        assert str(first) in line  # names the earlier replay
    assert _flows(lbm) == 4 + 2  # only b.pcap's rows were added
    res = lbm("capture", "replay", "--again", str(copy), "--json", check=True)
    assert json.loads(res.stdout)["flows"] == 4 and _flows(lbm) == 10
    ledger = DataPaths(lbm.data_dir).journal / "replayed.jsonl"
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    entries = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert {e["event"] for e in entries} == {"started", "done"}
    assert entries[-1]["flows"] == 4 and entries[-2]["again"] is True
    assert set(entries[0]) == {"event", "run", "sha256", "edges", "size", "file", "at", "again"}
    assert entries[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()


def test_summary_is_printed_per_file_and_in_total(lbm: Lbm, tmp_path: Path) -> None:
    a = _pcap(tmp_path / "a.pcap", [_syn(i) for i in range(2)])
    b = _pcap(tmp_path / "b.pcap", [_syn(i) for i in range(10, 15)])
    res = lbm("capture", "replay", str(a), str(b), check=True)
    assert res.stdout.split("\n== ") == [
        f"== {a}\npackets: 2\nflows: 2\ndns rows: 0",
        f"{b}\npackets: 5\nflows: 5\ndns rows: 0",
        "total (2 files)\npackets: 7\nflows: 7\ndns rows: 0\n",
    ]


def test_oversize_record_is_skipped_and_later_packets_replayed(lbm: Lbm, tmp_path: Path) -> None:
    frames = [_syn(0), _syn(1) + b"\x00" * (70 << 20), _syn(2), _syn(3)]
    big = _pcap(tmp_path / "big.pcap", frames)
    res = lbm("capture", "replay", str(big), "--json", check=True)
    summary = json.loads(res.stdout)
    assert summary["packets"] == 3 and summary["flows"] == 3 == _flows(lbm)
    assert summary["bad_packets"] == {"reader_oversize_record": 1}
    cut = _pcap(tmp_path / "cut.pcap", [_syn(5), _syn(6) + b"\x00" * (70 << 20)])
    cut.write_bytes(cut.read_bytes()[: 1 << 20])  # ends inside the big record
    res = lbm("capture", "replay", str(cut), check=True)
    assert "reader_truncated_record: 1" in res.stdout
    assert "the file ends inside a record: it is truncated" in res.stdout

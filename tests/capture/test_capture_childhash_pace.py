"""The hashing child is paced by the replay (`ChildHash.pace`): normal priority while it is
more than `PACE_LAG` bytes behind the reader, nice 19 once it is not, so the replay's end does
not wait for a child starved at nice 19; without the right to raise a priority, pacing stops
and the child stays as it is. `lbm capture replay` paces it after every batch and reports the
wait for the digest (`hash_wait_s`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm

from capture.read import childhash
from capture.read.childhash import ChildHash

SIZE = 192 << 20  # a sparse file: no disk used, a fraction of a second to hash
BIG = childhash.PACE_LAG + (16 << 20)  # a reader this far ahead: the child is behind
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root")


def _zeros_sha256(size: int) -> str:
    h, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(block)
    return h.hexdigest()


@pytest.fixture
def stopped_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChildHash]:
    """A child hashing a sparse file, stopped (SIGSTOP) once at nice 19, so it hashes nothing
    while the test paces it; `pace` looks at every call."""
    monkeypatch.setattr(childhash, "PACE_EVERY_S", 0.0)
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as fh:
        fh.truncate(SIZE)
    fd = os.open(p, os.O_RDONLY)
    child = ChildHash.spawn(fd)
    assert child is not None and child._proc is not None
    pid = child._proc.pid
    for _ in range(400):  # its first step sets nice 19
        if os.getpriority(os.PRIO_PROCESS, pid) == 19:
            break
        time.sleep(0.005)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):  # reaped by `result()`
            os.kill(pid, signal.SIGCONT)
        child.close()
        os.close(fd)


def _nice(child: ChildHash) -> int:
    assert child._proc is not None
    return os.getpriority(os.PRIO_PROCESS, child._proc.pid)


@root_only
def test_a_child_behind_the_reader_runs_at_normal_priority_until_it_catches_up(
    stopped_child: ChildHash,
) -> None:
    child = stopped_child
    assert _nice(child) == 19
    child.pace(BIG)  # the reader is far ahead of what the child has read
    assert _nice(child) == 0
    child.pace(BIG)
    assert _nice(child) == 0
    child.pace(1 << 20)  # the child is no longer behind
    assert _nice(child) == 19
    assert child._proc is not None
    os.kill(child._proc.pid, signal.SIGCONT)
    got = child.result()  # pacing changes nothing of the digest
    assert (got.sha256, got.size) == (_zeros_sha256(SIZE), SIZE)


def test_pacing_stops_when_the_priority_cannot_be_raised(
    stopped_child: ChildHash, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = stopped_child
    calls: list[int] = []

    def refused(which: int, who: int, prio: int) -> None:
        calls.append(prio)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(childhash.os, "setpriority", refused)
    child.pace(BIG)
    child.pace(BIG)
    child.pace(1 << 20)
    assert calls == [0]  # tried once, then pacing is off
    assert _nice(child) == 19  # the child stays as it was


def _pcap(path: Path, n: int) -> Path:
    """`n` Ethernet/IPv4/UDP frames of 1,400 bytes (over 2 MiB for n >= 1600: the ledger needs
    a hashing child for it)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 1386, 0, 0, 64, 17, 0, b"\n\0\0\1", b"\n\0\0\2")
        udp = struct.pack(">HHHH", 1024 + i % 500, 9999, 1366, 0)
        f = (b"\2" * 6 + b"\4" * 6 + b"\x08\x00" + ip + udp + struct.pack(">I", i) * 342)[:1400]
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def test_the_replay_paces_its_child_after_each_batch_with_the_readers_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lbm = Lbm(tmp_path / "data")
    lbm("init", check=True)
    f = _pcap(tmp_path / "a.pcap", 6000)
    seen: list[int] = []
    real = ChildHash.pace

    def spy(self: ChildHash, done: int) -> None:
        seen.append(done)
        real(self, done)

    monkeypatch.setattr(ChildHash, "pace", spy)
    res = lbm.inproc("capture", "replay", "--json", str(f))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["files"][0]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert seen and all(0 < d <= f.stat().st_size for d in seen)
    assert seen == sorted(seen)  # the reader's offset only moves forward
    timing = out["timing"]
    assert 0 <= timing["hash_wait_s"] <= timing["total_s"]

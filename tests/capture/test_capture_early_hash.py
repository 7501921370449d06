"""`lbm capture replay` starts the first file's hashing child as the command starts
(`appliance.cli.capture_process.EarlyHash`), before the pipeline's imports. The ledger records
that child's SHA-256 only for the very file the reader opened; a child nobody uses is stopped
at once (a refused replay, another file put in its place), and none outlives the command."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lbm_testing import Lbm

from appliance.cli.capture_process import EarlyHash
from capture.read import childhash
from capture.read.childhash import _CHILD, ChildHash, hurry

T0 = 1_700_000_000


def _pcap(n: int, tag: int) -> bytes:
    """A pcap of `n` Ethernet/IPv4/UDP frames of 1,400 bytes (over 2 MiB for n >= 1600, so the
    ledger needs the whole file's hash); `tag` makes files of the same size differ."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 1386, 0, 0, 64, 17, 0, b"\n\0\0\1", b"\n\0\0\2")
        udp = struct.pack(">HHHH", 1024 + i % 500, 9999, 1366, 0)
        body = struct.pack(">II", tag, i) * 171
        f = (b"\2" * 6 + b"\4" * 6 + b"\x08\x00" + ip + udp + body)[:1400]
        out.append(struct.pack("<IIII", T0 + i, 0, len(f), len(f)) + f)
    return b"".join(out)


def _holders(path: Path) -> list[int]:
    """Processes with `path` open (from /proc/*/fd)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found


class _Spawns:
    """ChildHash.spawn, counted: the descriptors' files it hashed, and how many "started"
    entries the ledger (`ledger`, if given) had at each spawn."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ledger: Path | None = None) -> None:
        self.files: list[str] = []
        self.started: list[int] = []
        real = ChildHash.spawn.__func__  # type: ignore[attr-defined]

        def spawn(cls: type[ChildHash], fd: int) -> ChildHash | None:
            self.files.append(os.readlink(f"/proc/self/fd/{fd}"))
            if ledger is not None:
                text = ledger.read_text() if ledger.exists() else ""
                self.started.append(text.count('"event": "started"'))
            child: ChildHash | None = real(cls, fd)
            return child

        monkeypatch.setattr(ChildHash, "spawn", classmethod(spawn))


def test_the_first_files_child_starts_early_and_its_digest_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lbm = Lbm(tmp_path / "data")
    lbm("init", check=True)
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(_pcap(1700, 1))
    b.write_bytes(_pcap(1700, 2))
    ledger = lbm.data_dir / "journal" / "replayed.jsonl"
    spawns = _Spawns(monkeypatch, ledger)
    res = lbm.inproc("capture", "replay", "--json", str(a), str(b))
    assert res.returncode == 0, res.stderr
    # one child per file, not two: the first file's started before the ledger's check (as
    # the command started), the second's after its "started" entry (as it is replayed)
    assert spawns.files == [str(a), str(b)]
    assert spawns.started == [0, 2]
    files = json.loads(res.stdout)["files"]
    for f, p in zip(files, (a, b), strict=True):
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    done = [
        json.loads(x)
        for x in (lbm.data_dir / "journal" / "replayed.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "done"
    ]
    assert [d["sha256"] for d in done] == [f["sha256"] for f in files]
    assert _holders(a) == [] and _holders(b) == []


def test_a_refused_replay_leaves_no_child_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lbm = Lbm(tmp_path / "data")
    lbm("init", check=True)
    a = tmp_path / "a.pcap"
    a.write_bytes(_pcap(1700, 1))
    assert lbm.inproc("capture", "replay", str(a)).returncode == 0
    spawns = _Spawns(monkeypatch)
    res = lbm.inproc("capture", "replay", str(a))
    assert res.returncode != 0 and "already replayed" in res.stderr
    assert spawns.files == [str(a)]  # the early child, stopped: no second one
    assert _holders(a) == []


def test_a_child_of_another_file_is_not_used(tmp_path: Path) -> None:
    """The name now leads to another file (replaced after the child started): `take` stops
    the child and gives nothing, so the ledger never records the other file's digest."""
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(_pcap(1700, 1))
    b.write_bytes(_pcap(1700, 2))
    early = EarlyHash(str(a))
    os.replace(b, a)
    fd = os.open(a, os.O_RDONLY)
    try:
        assert early.take(fd) is None
        early.close()
        assert _holders(a) == [] or _holders(a) == [os.getpid()]  # only this fd: ours
        again = EarlyHash(str(a))
        child = again.take(fd)
        assert child is not None
        assert child.result().sha256 == hashlib.sha256(a.read_bytes()).hexdigest()
        child.close()
        again.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["missing", "fifo", "directory", "small"])
def test_no_child_for_what_the_reader_refuses_or_the_ledger_hashes(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to hash (the reader refuses it), or a file of at most 2 MiB: the ledger's
    check hashes it whole at once, so no child is started for it."""
    spawns = _Spawns(monkeypatch)
    p = tmp_path / "x.pcap"
    if kind == "small":
        p.write_bytes(_pcap(1400, 1))  # 1,400 records of 1,416 bytes: just under 2 MiB
    elif kind == "fifo":
        os.mkfifo(p)  # opened without blocking, and not hashed
    elif kind == "directory":
        p.mkdir()
    early = EarlyHash(str(p))
    assert early.take(0) is None
    early.close()
    early.close()  # idempotent
    assert spawns.files == []


@pytest.mark.parametrize("size", [0, 1, (16 << 20) - 1, 16 << 20, (16 << 20) + 1, 40 << 20])
def test_the_childs_digest_is_the_files_sha256_whatever_its_size(tmp_path: Path, size: int) -> None:
    """The child hashes 16 MiB mappings and the tail by pread: sizes around a mapping's edge."""
    p = tmp_path / "f.bin"
    block = hashlib.sha256(b"x").digest() * 2048  # 64 KiB of varying bytes
    p.write_bytes((block * (size // len(block) + 1))[:size])
    fd = os.open(p, os.O_RDONLY)
    try:  # the child itself (not `result()`, which would hash here if the child failed)
        run = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, str(fd)],
            pass_fds=(fd,),
            capture_output=True,
            check=True,
        )
    finally:
        os.close(fd)
    assert run.stdout.split() == [hashlib.sha256(p.read_bytes()).hexdigest().encode(), b"%d" % size]


def test_the_child_hashes_at_nice_19_until_it_is_waited_for(tmp_path: Path) -> None:
    """The child takes mostly the CPU the replay leaves free (nice 19), and `result()` puts it
    back to normal priority when it waits for it (this process is root: it may)."""
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as fh:  # 2 GiB of holes: seconds of hashing, no disk used
        fh.truncate(2 << 30)
    fd = os.open(p, os.O_RDONLY)
    child = ChildHash.spawn(fd)
    assert child is not None
    pid = child._proc.pid  # type: ignore[union-attr]
    try:
        for _ in range(200):  # the child sets its priority as its first step
            if os.getpriority(os.PRIO_PROCESS, pid) == 19:
                break
            os.sched_yield()
            time.sleep(0.005)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        if os.geteuid() == 0:
            hurry(pid)
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER
            assert os.getpriority(os.PRIO_PROCESS, pid) == 0
    finally:
        child.close()
        os.close(fd)


def test_a_child_left_idle_is_not_waited_for_past_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that may not put the child back to normal priority (`hurry` False: not root)
    waits for it at most IDLE_GRACE_S; then the child is stopped and the file hashed here,
    with the same digest."""
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as fh:
        fh.truncate(256 << 20)
    monkeypatch.setattr(childhash, "hurry", lambda pid: False)
    monkeypatch.setattr(childhash, "IDLE_GRACE_S", 0.01)
    fd = os.open(p, os.O_RDONLY)
    try:
        child = ChildHash.spawn(fd)
        assert child is not None
        proc = child._proc
        assert proc is not None
        got = child.result()
        assert proc.returncode == -9  # stopped, not waited for to the end
    finally:
        os.close(fd)
    want = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(256):
        want.update(zeros)
    assert (got.sha256, got.size) == (want.hexdigest(), 256 << 20)

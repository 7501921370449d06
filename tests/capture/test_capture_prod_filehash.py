"""The replay ledger's SHA-256 is made from the bytes the reader reads (`FileHash` fed by the
reader's `tap`) and is always the SHA-256 of the whole file, as `sha256sum` prints it: for a
pcap and a pcapng read in many chunks, a file whose oversize record the reader skips by
seeking, a truncated file, a file whose reading stops at a corrupt block, a consumer that
stops after one batch; regions fed out of order, overlapping or with gaps change nothing.
The reader never changes a buffer it handed on: every batch kept to the end still holds the
file's bytes, and so does every region handed over."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm

from capture.read.filehash import FileHash, Fingerprint
from capture.read.reader import MAX_RECORD, open_capture
from capture.subjects import pcapng

T0 = 1_700_000_000


def _frame(i: int, size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes whose bytes say which packet it is."""
    body = struct.pack(">I", i) * (size // 4 + 1)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 17, 0, b"\n\0\0\1", b"\n\0\0\2")
    udp = struct.pack(">HHHH", 1024 + i % 50000, 53, size - 34, 0)
    return (b"\2" * 6 + b"\4" * 6 + b"\x08\x00" + ip + udp + body)[:size]


def _pcap(frames: list[bytes]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", T0 + i, 0, len(f), len(f)) + f)
    return b"".join(out)


def _pcapng(frames: list[bytes]) -> bytes:
    blocks = [pcapng.epb(0, (T0 + i) * 10**9, f, len(f)) for i, f in enumerate(frames)]
    return pcapng.shb() + pcapng.idb(1) + b"".join(blocks)


FRAMES = [_frame(i, 60 + (i * 37) % 1400) for i in range(600)]  # about 450 KB


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _replay(path: Path, *, chunk: int = 16384, stop_after: int | None = None) -> Fingerprint:
    """Read `path` as a replay does (the hash fed by the reader), on a duplicate descriptor
    (the reader closes its own); returns the fingerprint."""
    r = open_capture(path, chunk_bytes=chunk)
    fd = os.dup(r.fileno())
    try:
        h = FileHash(fd)
        r.tap = h.feed
        with r:
            for k, _ in enumerate(r.batches(64)):
                if stop_after is not None and k + 1 >= stop_after:
                    break
        return h.result()
    finally:
        os.close(fd)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_the_digest_is_the_files_sha256(tmp_path: Path, fmt: str) -> None:
    data = _pcap(FRAMES) if fmt == "pcap" else _pcapng(FRAMES)
    p = tmp_path / f"f.{fmt}"
    p.write_bytes(data)
    assert _replay(p) == Fingerprint(_sha(data), len(data))


def test_a_skipped_oversize_record_is_hashed_by_pread(tmp_path: Path) -> None:
    """The reader seeks over a 1 MiB record (above its 256 KiB limit) without reading it: the
    gap is read by the hasher, so the digest is still the whole file's."""
    data = _pcap([*FRAMES[:50], b"\x5a" * (1 << 20), *FRAMES[50:]])
    p = tmp_path / "skip.pcap"
    p.write_bytes(data)
    r = open_capture(p, chunk_bytes=16384)
    fed: list[tuple[int, int]] = []
    fd = os.dup(r.fileno())
    h = FileHash(fd)
    r.tap = lambda at, view: (fed.append((at, len(view))), h.feed(at, view))[1]
    with r:
        n = sum(len(b) for b in r.batches())
    try:
        assert n == len(FRAMES) and r.summary == {"oversize_record": 1}
        assert sum(size for _, size in fed) < len(data) - (1 << 20) + 16384  # it seeked over it
        assert h.result() == Fingerprint(_sha(data), len(data))
    finally:
        os.close(fd)


def test_a_skipped_oversize_pcapng_block_is_hashed_by_pread(tmp_path: Path) -> None:
    """pcapng: a custom block above the 64 MiB limit is skipped by seeking, after reading its
    trailing length (a 4-byte read that moves the file position): the digest is still the
    whole file's."""
    size = MAX_RECORD + 4
    big = struct.pack("<II", 0x0BAD, size) + b"\x5a" * (size - 12) + struct.pack("<I", size)
    blocks = [pcapng.epb(0, (T0 + i) * 10**9, f, len(f)) for i, f in enumerate(FRAMES)]
    data = pcapng.shb() + pcapng.idb(1) + b"".join(blocks[:50]) + big + b"".join(blocks[50:])
    p = tmp_path / "skip.pcapng"
    p.write_bytes(data)
    r = open_capture(p, chunk_bytes=16384)
    fd = os.dup(r.fileno())
    fed: list[int] = []
    h = FileHash(fd)
    r.tap = lambda at, view: (fed.append(len(view)), h.feed(at, view))[1]
    try:
        assert sum(len(b) for b in r.batches()) == len(FRAMES)
        assert r.summary == {"oversize_record": 1}
        assert sum(fed) < len(data) - MAX_RECORD + 16384  # it seeked over the block
        assert h.result() == Fingerprint(_sha(data), len(data))
    finally:
        os.close(fd)


def test_a_truncated_file_and_a_corrupt_block_are_hashed_to_the_end(tmp_path: Path) -> None:
    cut = _pcap(FRAMES)[:-100]  # the last record cut off
    p = tmp_path / "cut.pcap"
    p.write_bytes(cut)
    assert _replay(p) == Fingerprint(_sha(cut), len(cut))
    good = _pcapng(FRAMES[:20])
    bad = good + struct.pack("<II", 6, 13) + b"\0" * 8 + _pcapng(FRAMES)[28:]  # length 13
    q = tmp_path / "bad.pcapng"
    q.write_bytes(bad)
    r = open_capture(q, chunk_bytes=4096)
    assert sum(len(b) for b in r.batches()) == 20 and r.summary == {"bad_record": 1}
    assert _replay(q, chunk=4096) == Fingerprint(_sha(bad), len(bad))  # read stops at 20


def test_a_replay_stopped_early_is_hashed_to_the_end(tmp_path: Path) -> None:
    data = _pcap(FRAMES)
    p = tmp_path / "early.pcap"
    p.write_bytes(data)
    got = _replay(p, stop_after=1)
    assert got == Fingerprint(_sha(data), len(data))


def test_regions_overlapping_out_of_order_or_after_a_gap(tmp_path: Path) -> None:
    """An attacker-shaped feed: a region again, a region inside one hashed, one starting
    inside, one after a gap, one past the end of the file (the file shrank: the whole file is
    hashed again by pread, never a digest of bytes that are not there). The descriptor's
    offset, which the reader reads from, is never moved."""
    data = bytes(range(256)) * 400
    p = tmp_path / "x.bin"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        h = FileHash(fd)
        for a, b in ((0, 1000), (0, 1000), (10, 500), (900, 5000), (20000, 30000), (100, 200)):
            h.feed(a, memoryview(data)[a:b])
        assert h.result() == Fingerprint(_sha(data), len(data))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100
        h = FileHash(fd)
        h.feed(len(data) + 10, memoryview(b"not in the file"))
        assert h.result() == Fingerprint(_sha(data), len(data))
        h = FileHash(fd)
        h.close()  # stopped without a result: what is fed afterwards is not hashed
        h.feed(0, memoryview(data)[:1000])
        assert h._next == 0
    finally:
        os.close(fd)


def _held(path: Path, chunk: int) -> Iterator[tuple[int, memoryview]]:
    """Every region the reader hands over, kept until the end (as a slow hasher would)."""
    r = open_capture(path, chunk_bytes=chunk)
    regions: list[tuple[int, memoryview]] = []
    r.tap = lambda at, view: regions.append((at, view))
    batches = list(r.batches(50))  # every batch kept too
    frames = [b.frame(i) for b in batches for i in range(len(b))]
    assert frames == FRAMES
    yield from regions


def test_a_buffer_is_never_changed_while_a_batch_or_region_refers_to_it(tmp_path: Path) -> None:
    data = _pcap(FRAMES)
    p = tmp_path / "reuse.pcap"
    p.write_bytes(data)
    regions = list(_held(p, 8192))
    assert len(regions) > 20
    for at, view in regions:  # none handed over was overwritten by a later chunk
        assert bytes(view) == data[at : at + len(view)]


@pytest.mark.parametrize(
    "child",
    [
        "runs",  # the child process hashes it (capture.read.childhash)
        "cannot start",  # no child (here: no such interpreter): the reader's tap hashes it
        "fails",  # the child exits 1 without a digest: hashed again by pread
    ],
)
def test_the_done_line_has_the_whole_files_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: str
) -> None:
    """Through the CLI: a pcapng of more than 2 MiB (so the hash is made while it is read),
    whose reading stops at a corrupt block, records its whole SHA-256 in "done", however the
    hashing child fares."""
    lbm = Lbm(tmp_path / "data")
    lbm("init", check=True)
    if child != "runs":  # (sys.executable of this process: the replay runs in it)
        exe = str(tmp_path / "no-such-python") if child == "cannot start" else "/bin/false"
        monkeypatch.setattr("capture.read.childhash.sys.executable", exe)
    big = [_frame(i, 1400) for i in range(2000)]
    data = _pcapng(big) + struct.pack("<II", 6, 13) + b"\0" * 4000
    p = tmp_path / "c.pcapng"
    p.write_bytes(data)
    res = lbm.inproc("capture", "replay", "--json", str(p))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"][0]["sha256"] == _sha(data)
    lines = (lbm.data_dir / "journal" / "replayed.jsonl").read_text().splitlines()
    started, done = (json.loads(x) for x in lines[-2:])
    assert started["sha256"] is None and done["event"] == "done"
    assert done["sha256"] == _sha(data) and done["size"] == len(data)

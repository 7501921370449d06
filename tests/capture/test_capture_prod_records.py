"""pcap records walked piece by piece as a chunk is read (`PcapRecords`, C `walk_pcap_ts`)
are exactly the records one walk of the whole chunk finds (`walk_pcap`), with the same
timestamps in ns and count of bad timestamps: any steps, either byte order, microsecond and
nanosecond files, a record above the limit (the walk stops at it whatever follows), a batch
limit, hostile lengths; the pure-Python walker gives the same."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from capture.read import records, walk
from capture.read.records import PcapRecords
from capture.read.walk import STOP_BAD

CAPLIMIT = 4096


def _chunk(rng: random.Random, order: str, n: int, nsec: bool) -> bytes:
    out = []
    for _ in range(n):
        size = rng.choice([0, 1, 60, 1500, CAPLIMIT, CAPLIMIT + 1]) if rng.random() < 0.1 else 80
        frac = rng.choice([0, 999_999, 10**6, 10**9 - 1, 10**9, 2**32 - 1])
        wire = rng.choice([size, 2**32 - 1, 0])
        sec = rng.randrange(2**32)
        out.append(struct.pack(order + "IIII", sec, frac, size, wire) + bytes([size % 256]) * size)
    return b"".join(out)[: rng.randrange(1, 200_000)]  # cut anywhere


def _expected(buf: bytes, swapped: bool, nsec: bool, max_pkts: int) -> tuple[object, ...]:
    """One walk of the whole chunk by the pure-Python walker (the definition)."""
    off, cl, wl = (
        np.empty(max_pkts, np.int64),
        np.empty(max_pkts, np.int32),
        np.empty(max_pkts, np.int32),
    )
    sec, frac = np.empty(max_pkts, np.uint32), np.empty(max_pkts, np.uint32)
    n, consumed, status = walk._py_walk_pcap(
        buf, len(buf), swapped, max_pkts, CAPLIMIT, off, cl, wl, sec, frac
    )
    unit, limit = (1, 10**9) if nsec else (1000, 10**6)
    ts = sec[:n].astype(np.int64) * 10**9 + frac[:n].astype(np.int64) * unit
    bad = int(np.count_nonzero(frac[:n] >= limit))
    return off[:n].tolist(), cl[:n].tolist(), wl[:n].tolist(), ts.tolist(), bad, consumed, status


@pytest.mark.parametrize("python", [False, True], ids=["c", "python"])
def test_walking_in_pieces_finds_what_one_walk_finds(
    python: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if python:
        monkeypatch.setattr(records, "_MOD", None)
        monkeypatch.setattr(walk, "_MOD", None)
    elif records._MOD is None:
        pytest.skip("C record walker not built (no compiler?)")
    rng = random.Random(18)
    stopped_bad = 0
    for case in range(60):
        order = "<" if case % 2 else ">"
        swapped = (order == "<") != (struct.pack("=I", 1) == struct.pack("<I", 1))
        nsec = case % 3 == 0
        data = _chunk(rng, order, 300, nsec)
        max_pkts = rng.choice([1, 7, 100, 65536])
        buf = np.frombuffer(data + b"\0" * 64, np.uint8).copy()
        recs = PcapRecords(max_pkts, swapped, CAPLIMIT, nsec)
        got = 0
        while got < len(data):
            got = min(len(data), got + rng.choice([1, 15, 16, 17, 500, 5000]))
            recs.walk(buf, got)
        n = recs.n
        mine = (
            recs.off[:n].tolist(),
            recs.caplen[:n].tolist(),
            recs.wirelen[:n].tolist(),
            recs.ts[:n].tolist(),
            recs.bad_ts,
            recs.consumed,
            recs.status,
        )
        assert mine == _expected(data, swapped, nsec, max_pkts), case
        stopped_bad += recs.status == STOP_BAD
    assert stopped_bad  # the oversize case was exercised


def test_a_walk_never_reads_past_the_length_it_is_given() -> None:
    """A record whose header claims more than the buffer holds is not a record yet, and a
    length beyond the buffer is refused (the C code reads only up to `length`)."""
    rec = struct.pack("<IIII", 1, 2, 100, 100) + b"x" * 100
    buf = np.frombuffer(rec * 2, np.uint8).copy()
    recs = PcapRecords(10, False, CAPLIMIT, False)
    recs.walk(buf, len(rec) + 50)
    assert (recs.n, recs.consumed) == (1, len(rec))
    recs.walk(buf, buf.shape[0] + 1000)  # more than the buffer: nothing walked
    assert (recs.n, recs.consumed) == (1, len(rec))
    recs.walk(buf, buf.shape[0])
    assert recs.n == 2 and recs.off[:2].tolist() == [16, len(rec) + 16]

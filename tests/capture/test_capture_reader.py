"""Capture file reader: pcap (us/ns, both byte orders), pcapng (sections, interfaces,
resolutions, block kinds), clear errors for broken file headers, counted record problems,
bounded-chunk streaming, and the C and pure-Python record walkers agreeing."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture import CaptureError
from capture.batch import RawBatch
from capture.read import walk as fastpath
from capture.read.prefetch import Prefetch
from capture.read.reader import DEFAULT_CHUNK, FIRST_CHUNK, open_capture

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("reader_mode")  # each test twice: chunks mapped and read
MIXED = REPO / "pcaps" / "mixed-linktypes.pcapng"
T0 = 1_700_000_000
S = 1_000_000_000


def _frame(i: int, size: int) -> bytes:
    return struct.pack(">I", i) + bytes([i % 256]) * (size - 4)


def write_pcap(
    path: Path,
    frames: list[bytes],
    *,
    nsec: bool = False,
    order: str = "<",
    network: int = 1,
    snaplen: int = 65535,
    wire_extra: int = 0,
) -> None:
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, network)]
    for i, f in enumerate(frames):
        frac = (i * 1000 + 7) if nsec else (i * 10 + 7)
        out.append(struct.pack(order + "IIII", T0 + i, frac, len(f), len(f) + wire_extra) + f)
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("nsec", [False, True])
@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_variants(tmp_path: Path, nsec: bool, order: str) -> None:
    frames = [_frame(i, 60 + i) for i in range(5)]
    p = tmp_path / "x.pcap"
    write_pcap(p, frames, nsec=nsec, order=order, wire_extra=3)
    r = open_capture(p)
    batches = list(r.batches(max_packets=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    got = [b.frame(i) for b in batches for i in range(len(b))]
    assert got == frames
    ts = np.concatenate([b.ts_ns for b in batches]).tolist()
    unit = 1 if nsec else 1000
    assert ts == [
        (T0 + i) * S + ((i * 1000 + 7) if nsec else (i * 10 + 7)) * unit for i in range(5)
    ]
    wire = np.concatenate([b.wire_len for b in batches]).tolist()
    assert wire == [len(f) + 3 for f in frames]
    assert r.format == ("pcap-ns" if nsec else "pcap") and r.summary == {}


def test_pcap_linktype_high_bits_are_masked(tmp_path: Path) -> None:
    p = tmp_path / "fcs.pcap"
    write_pcap(p, [_frame(0, 60)], network=0x30000065)  # RAW (101) with FCS bits set
    b = next(open_capture(p).batches())
    assert b.linktype.tolist() == [101]


def test_pcapng_mixed_sections_interfaces_and_blocks() -> None:
    r = open_capture(MIXED)
    batches = list(r.batches(max_packets=3))
    lt = np.concatenate([b.linktype for b in batches]).tolist()
    ts = np.concatenate([b.ts_ns for b in batches]).tolist()
    iface = np.concatenate([b.iface for b in batches]).tolist()
    assert lt == [1, 101, 276, 0, 1, 1, 229, 1]
    assert iface == [0, 1, 2, 3, 0, 0, 0, 1]
    assert ts == [
        T0 * S + 1_000,  # microseconds
        T0 * S + 2,  # nanoseconds
        T0 * S + 3_000_000 + 100 * S,  # milliseconds + if_tsoffset
        T0 * S + 4_000,
        T0 * S + 4_000,  # simple packet block: no timestamp, previous packet's
        T0 * S + 7_000,  # obsolete packet block
        T0 * S + 5_000,  # big-endian section, default resolution
        T0 * S + S // 2,  # 2^-20 s resolution: half a second
    ]
    assert r.summary == {}


def _broken(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "too short"),
        (b"GIF89a" + b"\x00" * 40, "not a pcap or pcapng file"),
        (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "truncated pcap file header"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version"),
        (struct.pack("<III", 0x0A0D0D0A, 28, 0x11223344) + b"\x00" * 16, "byte-order magic"),
        (struct.pack("<III", 0x0A0D0D0A, 28, 0x1A2B3C4D), "truncated pcapng section header"),
    ],
)
def test_broken_file_header_is_a_clear_error(tmp_path: Path, data: bytes, fragment: str) -> None:
    p = _broken(tmp_path, "bad.cap", data)
    with pytest.raises(CaptureError) as err:
        for _ in open_capture(p).batches():
            pass
    assert str(p) in str(err.value) and fragment in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"nope\.pcap: cannot open"):
        open_capture(tmp_path / "nope.pcap")


def test_truncated_last_record_is_counted(tmp_path: Path) -> None:
    p = tmp_path / "t.pcap"
    write_pcap(p, [_frame(i, 100) for i in range(3)])
    p.write_bytes(p.read_bytes()[:-30])
    r = open_capture(p)
    assert sum(len(b) for b in r.batches()) == 2
    assert r.summary == {"truncated_record": 1}
    ng = tmp_path / "t.pcapng"
    ng.write_bytes(MIXED.read_bytes()[:-10])
    r = open_capture(ng)
    assert sum(len(b) for b in r.batches()) == 7
    assert r.summary == {"truncated_record": 1}


def test_corrupt_record_length_past_the_end_is_a_truncation(tmp_path: Path) -> None:
    """A record header claiming 4 GiB in a small file: the records before it are read, and
    the file is reported as ending inside that record (see test_capture_reader_oversize)."""
    p = tmp_path / "c.pcap"
    write_pcap(p, [_frame(i, 100) for i in range(4)])
    data = bytearray(p.read_bytes())
    rec2 = 24 + 2 * 116
    data[rec2 + 8 : rec2 + 12] = struct.pack("<I", 0xFFFFFFF0)
    p.write_bytes(bytes(data))
    r = open_capture(p)
    assert sum(len(b) for b in r.batches()) == 2
    assert r.summary == {"truncated_record": 1}


def test_streams_in_bounded_chunks(tmp_path: Path) -> None:
    """A 20 MB file read with 1 MiB chunks: every record intact across chunk boundaries,
    no batch buffer larger than the chunk, and memory use independent of file size."""
    p = tmp_path / "big.pcap"
    n = 20_000
    write_pcap(p, [_frame(i, 1000 + (i % 7)) for i in range(n)])
    chunk = 1 << 20
    seen = 0
    tracemalloc.start()
    try:
        for b in open_capture(p, chunk_bytes=chunk).batches(max_packets=4096):
            assert b.buf.nbytes <= chunk + 4096
            for i in (0, len(b) - 1):
                f = b.frame(i)
                k = struct.unpack(">I", f[:4])[0]
                assert k == seen + i and len(f) == 1000 + (k % 7) and f[-1] == k % 256
            seen += len(b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n
    assert peak < 8 * chunk, peak


def test_the_first_chunk_is_small_and_the_rest_default_sized(tmp_path: Path) -> None:
    """By default the first chunk is `FIRST_CHUNK` (the first batch comes early) and the
    others `DEFAULT_CHUNK`; every record is read once, in order, whatever the chunk."""
    p = tmp_path / "f.pcap"
    n = 40_000  # about 40 MB: a first chunk and two full ones after it
    write_pcap(p, [_frame(i, 1000) for i in range(n)])
    sizes, seen = [], 0
    for b in open_capture(p).batches(max_packets=1 << 20):
        sizes.append(b.buf.nbytes)
        assert [struct.unpack(">I", b.frame(i)[:4])[0] for i in (0, len(b) - 1)] == [
            seen,
            seen + len(b) - 1,
        ]
        seen += len(b)
    assert seen == n
    assert sizes[0] == FIRST_CHUNK and sizes[1:-1] == [DEFAULT_CHUNK] * (len(sizes) - 2)
    # an explicit chunk smaller than FIRST_CHUNK is used from the start (a mapped last chunk
    # holds what is left of the file, a read one is zeroed after it)
    sizes = [b.buf.nbytes for b in open_capture(p, chunk_bytes=65536).batches()]
    assert set(sizes[:-1]) == {65536} and 0 < sizes[-1] <= 65536


def test_chunk_buffers_are_reused_only_once_nothing_refers_to_them(tmp_path: Path) -> None:
    """A chunk buffer is read into again only when every batch and view of it is gone (no page
    of fresh memory to clear per chunk): batches the caller keeps keep their bytes while the
    file is read on, and the others' buffers are reused."""
    p = tmp_path / "f.pcap"
    n = 6_000  # 1,016-byte records: about 64 a 64 KiB chunk, 94 chunks
    write_pcap(p, [_frame(i, 1000) for i in range(n)])
    r = open_capture(p, chunk_bytes=65536, mapped=False)  # the pool of the chunks read
    kept, seen = [], 0
    for i, b in enumerate(r.batches()):
        if i % 3 == 0:
            kept.append((seen, b))
        seen += len(b)
    assert seen == n and r._chunks.reused > 30
    for first, b in kept:
        got = [struct.unpack(">I", b.frame(j)[:4])[0] for j in range(len(b))]
        assert got == list(range(first, first + len(b)))


def _first_records(p: Path, keep: bool) -> tuple[int, set[int], list[tuple[int, RawBatch]]]:
    """`p` read on a thread ahead of the caller as a replay reads it (`Prefetch`, with the
    reader's `wait_taken` set as `capture.replay` sets it), 64 KiB chunks; each record checked
    in order. Returns (records, chunk buffers seen, kept (first record, batch) when `keep`).
    Chunks read, not mapped: the pool is theirs."""
    r = open_capture(p, chunk_bytes=65536, mapped=False)
    ahead = Prefetch(r.batches(), 1)
    r.wait_taken = ahead.wait_taken
    buffers: set[int] = set()
    kept: list[tuple[int, RawBatch]] = []
    seen = 0
    for b in ahead:
        assert [struct.unpack(">I", b.frame(i)[:4])[0] for i in (0, len(b) - 1)] == [
            seen,
            seen + len(b) - 1,
        ]
        if b.buf.nbytes == 65536:
            buffers.add(b.buf.ctypes.data)
        if keep:
            kept.append((seen, b))
        seen += len(b)
        time.sleep(0.001)  # the caller's work on it, the GIL let go (as the C passes do)
    return seen, buffers, kept


def test_a_reader_ahead_of_its_consumer_reads_into_two_buffers_in_turn(tmp_path: Path) -> None:
    """A reader on its own thread, a batch ahead of the flow table: when both its chunk
    buffers are held (the batch being worked on, the next one queued) it waits for the queued
    one to be taken, which lets go of the one before, and reads into that buffer, rather than
    touching a third (16 MiB at the default chunk; memory touched for the first time was the
    dearest part of the reader on the bench machine, docs/capture-io.md)."""
    p = tmp_path / "f.pcap"
    n = 6_000  # 1,016-byte records: about 94 chunks of 64 KiB
    write_pcap(p, [_frame(i, 1000) for i in range(n)])
    seen, buffers, _ = _first_records(p, keep=False)
    assert seen == n and len(buffers) == 2


def test_batches_a_consumer_keeps_are_never_read_into_and_never_waited_for(
    tmp_path: Path,
) -> None:
    """A consumer that keeps every batch: the reader waits for a queued batch to be taken,
    finds its buffers still held, and with nothing queued takes another buffer instead of
    waiting on; every kept batch keeps its bytes."""
    p = tmp_path / "f.pcap"
    n = 1_500  # about 24 chunks
    write_pcap(p, [_frame(i, 1000) for i in range(n)])
    seen, buffers, kept = _first_records(p, keep=True)
    assert seen == n and len(buffers) == len(kept)  # a buffer of its own for each kept batch
    for first, b in kept:
        got = [struct.unpack(">I", b.frame(j)[:4])[0] for j in range(len(b))]
        assert got == list(range(first, first + len(b)))


def test_record_larger_than_chunk(tmp_path: Path) -> None:
    p = tmp_path / "jumbo.pcap"
    frames = [_frame(0, 60), _frame(1, 300_000), _frame(2, 60)]
    write_pcap(p, frames, snaplen=400_000)
    got = [b.frame(i) for b in open_capture(p, chunk_bytes=65536).batches() for i in range(len(b))]
    assert got == frames


def test_c_and_python_walkers_agree() -> None:
    if fastpath.IMPLEMENTATION != "c":
        pytest.skip("C record walker not built (no compiler?)")
    data = bytearray(MIXED.read_bytes())
    shb_len = struct.unpack_from("<I", data, 4)[0]
    buf = data[shb_len:]
    c = fastpath.walk_pcapng(buf, len(buf), False, 100, 1 << 20)
    fastpath_mod = fastpath._MOD
    try:
        fastpath._MOD = None
        py = fastpath.walk_pcapng(buf, len(buf), False, 100, 1 << 20)
    finally:
        fastpath._MOD = fastpath_mod
    assert (c.consumed, c.status, c.stop_type) == (py.consumed, py.status, py.stop_type)
    for f in ("off", "caplen", "wirelen", "iface", "ts"):
        assert getattr(c, f).tolist() == getattr(py, f).tolist()


def test_pure_python_fallback_reads_the_same(tmp_path: Path) -> None:
    """With the C extension disabled, the reader gives the same packets and timestamps."""
    code = (
        "import sys, numpy as np\n"
        "from capture.read.walk import IMPLEMENTATION\n"
        "from capture.read.reader import DEFAULT_CHUNK, FIRST_CHUNK, open_capture\n"
        "assert IMPLEMENTATION == 'python', IMPLEMENTATION\n"
        "bs = list(open_capture(sys.argv[1]).batches(max_packets=2))\n"
        "print(repr((np.concatenate([b.ts_ns for b in bs]).tolist(),"
        " [b.frame(i).hex() for b in bs for i in range(len(b))])))\n"
    )
    env = dict(os.environ, LBM_CAPTURE_NO_C="1")
    run = subprocess.run(
        [sys.executable, "-c", code, str(MIXED)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    bs = list(open_capture(MIXED).batches(max_packets=2))
    want = (
        np.concatenate([b.ts_ns for b in bs]).tolist(),
        [b.frame(i).hex() for b in bs for i in range(len(b))],
    )
    assert run.stdout.strip() == str(want)


PCAP_HDR = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
PCAPNG_HDR = MIXED.read_bytes()[:28] + MIXED.read_bytes()[28:48]  # SHB + first IDB


@settings(max_examples=200, deadline=None)
@given(
    head=st.sampled_from([PCAP_HDR, PCAPNG_HDR, b""]),
    body=st.binary(max_size=600),
    chunk=st.sampled_from([4096, 1 << 20]),
)
def test_arbitrary_file_bytes_end_cleanly(head: bytes, body: bytes, chunk: int) -> None:
    """Random bytes after a file header: the reader finishes (or refuses the header with a
    CaptureError); frames it yields lie inside their buffers."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cap") as tmp:
        tmp.write(head + body)
        tmp.flush()
        try:
            r = open_capture(tmp.name, chunk_bytes=chunk)
            for b in r.batches(max_packets=7):
                assert np.all(b.frame_off + b.cap_len <= b.buf.shape[0])
                assert np.all(b.cap_len >= 0)
        except CaptureError as exc:
            assert tmp.name in str(exc)

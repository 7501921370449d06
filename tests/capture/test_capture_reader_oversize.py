"""Hostile capture files: a record or block above the size limit (a real 70 MiB record, or a
header claiming one) is skipped by its length and counted, and every good record after it is
read; a length that runs past the end of the file is reported as a truncation; anything but a
regular file (FIFO, device, directory, a path that cannot be opened) is refused with one line
naming the path, and a FIFO never hangs the reader."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture import CaptureError
from capture.read import reader
from capture.read.reader import MAX_RECORD, open_capture
from capture.subjects import pcapng

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("reader_mode")  # each test twice: chunks mapped and read
T0 = 1_700_000_000
BIG = 70 << 20  # above MAX_RECORD (64 MiB)


def _frame(i: int, size: int = 80) -> bytes:
    return struct.pack(">I", i) + bytes([i % 251]) * (size - 4)


def _pcap(frames: list[bytes], *, snaplen: int = 65535, order: str = "<") -> bytes:
    out = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack(order + "IIII", T0 + i, 0, len(f), len(f)) + f)
    return b"".join(out)


def _read(path: Path, **kw: int) -> tuple[list[bytes], dict[str, int]]:
    max_packets = kw.pop("max_packets", 65536)
    r = open_capture(path, **kw)
    frames = [b.frame(i) for b in r.batches(max_packets) for i in range(len(b))]
    return frames, r.summary


GOOD_BEFORE = [_frame(i) for i in range(3)]
GOOD_AFTER = [_frame(i, 100 + i) for i in range(10, 15)]


@pytest.mark.parametrize("max_packets", [1, 7, 65536])
def test_real_70mib_pcap_record_is_skipped_and_the_rest_read(
    tmp_path: Path, max_packets: int
) -> None:
    p = tmp_path / "big.pcap"
    p.write_bytes(_pcap([*GOOD_BEFORE, _frame(99, BIG), *GOOD_AFTER]))
    tracemalloc.start()
    try:
        frames, summary = _read(p, max_packets=max_packets)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == GOOD_BEFORE + GOOD_AFTER
    assert summary == {"oversize_record": 1}
    assert peak < 40 << 20, peak  # skipped by its length, never held in memory


@pytest.mark.parametrize("chunk", [4096, 1 << 20, 8 << 20])
def test_oversize_pcap_records_inside_and_across_chunks(tmp_path: Path, chunk: int) -> None:
    """Records above the file's limit (snaplen 65535 -> 256 KiB) that end inside the current
    chunk or beyond it, several in a row and at the very end of the file."""
    big = [_frame(90 + k, 300_000 + 4 * k) for k in range(3)]
    frames = [GOOD_BEFORE[0], big[0], big[1], GOOD_BEFORE[1], *GOOD_AFTER, big[2]]
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap(frames))
    got, summary = _read(p, chunk_bytes=chunk, max_packets=3)
    assert got == [GOOD_BEFORE[0], GOOD_BEFORE[1], *GOOD_AFTER]
    assert summary == {"oversize_record": 3}


def test_big_endian_pcap_oversize_record_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "be.pcap"
    p.write_bytes(_pcap([GOOD_BEFORE[0], _frame(7, 400_000), *GOOD_AFTER], order=">"))
    assert _read(p, chunk_bytes=65536) == ([GOOD_BEFORE[0], *GOOD_AFTER], {"oversize_record": 1})


@pytest.mark.parametrize("claimed", [BIG, 0xFFFFFFF0])
@pytest.mark.parametrize("chunk", [4096, 8 << 20])
def test_record_length_past_the_end_of_file_is_a_truncation(
    tmp_path: Path, claimed: int, chunk: int
) -> None:
    """A header claiming a huge caplen with fewer bytes left in the file: the records before
    it are read and the file is reported as truncated, not skipped past silently."""
    body = _pcap(GOOD_BEFORE) + struct.pack("<IIII", T0, 0, claimed, claimed)
    p = tmp_path / "t.pcap"
    p.write_bytes(body + b"\x00" * 100_000 + _pcap(GOOD_AFTER)[24:])
    assert _read(p, chunk_bytes=chunk) == (GOOD_BEFORE, {"truncated_record": 1})


def _ng(blocks: list[bytes]) -> bytes:
    return pcapng.shb() + pcapng.idb(1) + b"".join(blocks)


def _epbs(frames: list[bytes], iface: int = 0) -> list[bytes]:
    return [pcapng.epb(iface, (T0 + i) * 10**9, f, len(f)) for i, f in enumerate(frames)]


def _dsb_like(size: int, btype: int = 0x0BAD) -> bytes:
    """A custom block of `size` bytes (unknown type: skipped by readers)."""
    return struct.pack("<II", btype, size) + b"\x00" * (size - 12) + struct.pack("<I", size)


@pytest.mark.parametrize("max_packets", [1, 65536])
def test_real_70mib_pcapng_block_is_skipped_and_the_rest_read(
    tmp_path: Path, max_packets: int
) -> None:
    blocks = [*_epbs(GOOD_BEFORE), *_epbs([_frame(99, BIG)]), *_epbs(GOOD_AFTER)]
    p = tmp_path / "big.pcapng"
    p.write_bytes(_ng(blocks))
    frames, summary = _read(p, max_packets=max_packets)
    assert frames == GOOD_BEFORE + GOOD_AFTER
    assert summary == {"oversize_record": 1}


@pytest.mark.parametrize("chunk", [4096, 8 << 20])
def test_oversize_pcapng_blocks_of_any_type_are_skipped(tmp_path: Path, chunk: int) -> None:
    """An oversize unknown block and an oversize IDB: both skipped; packets on the skipped
    interface are counted as bad_interface, packets on the others read."""
    over = MAX_RECORD + 4
    idb_big = struct.pack("<IIHHI", 1, over, 1, 0, 65535) + b"\x00" * (over - 20)
    idb_big += struct.pack("<I", over)
    blocks = [
        *_epbs(GOOD_BEFORE),
        _dsb_like(over),
        idb_big,  # interface 1
        *_epbs([_frame(50)], iface=1),
        *_epbs(GOOD_AFTER),
    ]
    p = tmp_path / "blocks.pcapng"
    p.write_bytes(_ng(blocks))
    frames, summary = _read(p, chunk_bytes=chunk)
    assert frames == GOOD_BEFORE + GOOD_AFTER
    assert summary == {"oversize_record": 2, "bad_interface": 1}


@pytest.mark.parametrize("chunk", [4096, 8 << 20])
def test_pcapng_oversize_block_with_wrong_trailer_or_past_eof(tmp_path: Path, chunk: int) -> None:
    """An oversize block whose trailing length does not match is corruption (bad_record, the
    read stops there); one that runs past the end of the file is a truncation."""
    over = MAX_RECORD + 8
    bad = _dsb_like(over)[:-4] + struct.pack("<I", over + 4)
    p = tmp_path / "bad.pcapng"
    p.write_bytes(_ng([*_epbs(GOOD_BEFORE), bad, *_epbs(GOOD_AFTER)]))
    assert _read(p, chunk_bytes=chunk) == (GOOD_BEFORE, {"bad_record": 1})
    p.write_bytes(_ng([*_epbs(GOOD_BEFORE), _dsb_like(over)[: 1 << 20]]))
    assert _read(p, chunk_bytes=chunk) == (GOOD_BEFORE, {"truncated_record": 1})


def test_pure_python_walker_skips_the_same(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap([GOOD_BEFORE[0], _frame(7, 400_000), *GOOD_AFTER]))
    code = (
        "import sys\n"
        "from capture.read.walk import IMPLEMENTATION\n"
        "from capture.read.reader import open_capture\n"
        "assert IMPLEMENTATION == 'python'\n"
        "r = open_capture(sys.argv[1], chunk_bytes=65536)\n"
        "print(sum(len(b) for b in r.batches(3)), r.summary)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(p)],
        capture_output=True,
        text=True,
        env=dict(os.environ, LBM_CAPTURE_NO_C="1"),
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == f"{1 + len(GOOD_AFTER)} {{'oversize_record': 1}}"


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(60, 1500), st.integers(262_145, 300_000)), min_size=1, max_size=12
    ),
    chunk=st.sampled_from([4096, 65536, 1 << 20]),
    max_packets=st.sampled_from([1, 3, 65536]),
    fmt=st.sampled_from(["pcap", "pcapng"]),
)
def test_any_mix_of_normal_and_oversize_records(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    chunk: int,
    max_packets: int,
    fmt: str,
) -> None:
    """Whatever the order, chunk size and batch size: exactly the records within the limit
    are read, in order, and each one above it is counted once (pcapng with a 256 KiB block
    limit here, so the test stays small)."""
    frames = [_frame(i, n) for i, n in enumerate(sizes)]
    p = tmp_path_factory.mktemp("mix") / f"x.{fmt}"
    p.write_bytes(_pcap(frames) if fmt == "pcap" else _ng(_epbs(frames)))
    want = [f for f in frames if len(f) <= 1500]
    over = len(frames) - len(want)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "MAX_RECORD", 262_144)
        got, summary = _read(p, chunk_bytes=chunk, max_packets=max_packets)
    assert got == want
    assert summary == ({"oversize_record": over} if over else {})


# --- not a regular file ----------------------------------------------------------------------


def _refused(path: Path, fragment: str) -> None:
    with pytest.raises(CaptureError) as err:
        open_capture(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and fragment in msg and "\n" not in msg, msg


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    """Run in a child with a timeout: a reader that opens the FIFO blocking would hang there
    (no writer ever comes)."""
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    code = (
        "import sys\n"
        "from capture import CaptureError\n"
        "from capture.read.reader import open_capture\n"
        "try:\n"
        "    open_capture(sys.argv[1])\n"
        "except CaptureError as e:\n"
        "    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(fifo)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert run.stdout.strip() == f"{fifo}: not a regular file (a FIFO); refused", run.stderr
    _refused(fifo, "a FIFO")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("/dev/zero", "a character device"),
        (".", "a directory"),
        ("missing-dir/x.pcap", "cannot open (No such file or directory)"),
    ],
)
def test_not_a_regular_file_is_refused(tmp_path: Path, name: str, fragment: str) -> None:
    _refused(tmp_path / name, fragment)


def test_dangling_symlink_and_socket_are_refused(tmp_path: Path) -> None:
    import socket

    link = tmp_path / "dangling.pcap"
    link.symlink_to(tmp_path / "gone.pcap")
    _refused(link, "cannot open")
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        _refused(sock_path, "a socket")


def test_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.pcap"
    real.write_bytes(_pcap(GOOD_BEFORE))
    link = tmp_path / "link.pcap"
    link.symlink_to(real)
    frames, summary = _read(link)
    assert frames == GOOD_BEFORE and summary == {}

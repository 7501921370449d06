"""Capture chunks mapped from the page cache (`capture.read.mapped`): read-only, the same records
as reading, and a file truncated under its mappings fails with one clear error instead of
killing the process with SIGBUS; a SIGBUS that is not the guard's still ends the process.

The truncation cases run in a child Python: if the guard failed, SIGBUS would kill the test
process itself."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.policy.snapshot import Snapshot
from capture.flow import FlowConfig
from capture.pipeline import Pipeline
from capture.read import walk
from capture.read.reader import open_capture
from capture.replay import replay
from store.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000

pytestmark = pytest.mark.skipif(walk.IMPLEMENTATION != "c", reason="C extension not built")


def _frame(i: int, size: int = 1000) -> bytes:
    """An Ethernet/IPv4/UDP frame from 10.0.0.1 numbered `i` (its first 4 bytes)."""
    eth = struct.pack(">I", i) + b"\x00\x00" + b"\x02" * 6 + b"\x08\x00"
    udp_len = size - 14 - 20
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([192, 0, 2, i % 200 + 1]))  # fmt: skip
    udp = struct.pack(">HHHH", 40000 + i % 1000, 53, udp_len, 0)
    return eth + ip + udp + bytes(udp_len - 8)


def _write(p: Path, n: int) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        f = _frame(i)
        out.append(struct.pack("<IIII", T0 + i // 100, i % 100, len(f), len(f)) + f)
    p.write_bytes(b"".join(out))


def _records(p: Path, mapped: bool) -> list[bytes]:
    r = open_capture(p, chunk_bytes=65536, mapped=mapped)
    assert (r._chunks.mapper is not None) == mapped
    return [b.frame(i) for b in r.batches() for i in range(len(b))]


def test_mapped_chunks_are_read_only_and_hold_the_records_reading_gives(tmp_path: Path) -> None:
    p = tmp_path / "f.pcap"
    _write(p, 3000)  # about 46 chunks of 64 KiB
    assert _records(p, True) == _records(p, False) == [_frame(i) for i in range(3000)]
    b = next(open_capture(p).batches())
    assert not b.buf.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        b.buf[0] = 1


def test_a_reader_out_of_guarded_mappings_reads_the_rest_of_the_file(tmp_path: Path) -> None:
    """The guard records 256 mappings at once: a consumer that keeps more batches (each holding
    its chunk's mapping) makes the reader read the rest of the file instead; every record
    still comes once, in order, and the kept batches keep their bytes."""
    p = tmp_path / "f.pcap"
    n = 20_000  # about 310 chunks of 64 KiB
    _write(p, n)
    r = open_capture(p, chunk_bytes=65536)
    kept = list(r.batches())
    assert r._chunks.mapper is None  # mapping stopped on the way
    assert not kept[0].buf.flags.writeable and kept[-1].buf.flags.writeable  # mapped, then read
    got = [b.frame(i) for b in kept for i in range(len(b))]
    assert got == [_frame(i) for i in range(n)]


def _child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LBM_CAPTURE_NO_MMAP", None)
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script, *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


TRUNCATED = """
import os, sys
from capture import CaptureError
from capture.read.reader import open_capture
p = sys.argv[1]
r = open_capture(p, chunk_bytes=65536)
assert r._chunks.mapper is not None
batches = r.batches()
first = next(batches)
os.truncate(p, 24)  # only the file header is left
print("zeros", first.frame(0) == bytes(len(first.frame(0))))  # its pages now past the end
try:
    for b in batches:
        pass
except CaptureError as exc:
    print("error", exc)
try:
    r.check()
except CaptureError as exc:
    print("check", exc)
"""


def test_a_file_truncated_under_its_mappings_fails_with_an_error_and_the_process_lives(
    tmp_path: Path,
) -> None:
    """Touching a mapped page past the file's new end raises SIGBUS: the guard gives the page
    zeros instead, and the reader fails the file by name, saying what happened."""
    p = tmp_path / "f.pcap"
    _write(p, 3000)
    run = _child(TRUNCATED, str(p))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "zeros True"
    for line, what in zip(lines[1:], ("error", "check"), strict=True):
        assert line.startswith(f"{what} {p}: the file shrank to 24 bytes while it was being read")
    assert "Bus error" not in run.stderr


def test_a_replay_of_a_file_truncated_meanwhile_records_the_file_as_failed(
    tmp_path: Path,
) -> None:
    """The replay (reader a batch ahead on its thread, the flow table reading the payloads)
    records the file among `files_failed` with the reader's message; the process goes on."""
    p = tmp_path / "f.pcap"
    _write(p, 40_000)  # about 40 MB: a first chunk of 1 MiB, then 16 MiB ones
    snap = Snapshot.build()
    pipe = Pipeline(
        paths=DataPaths(tmp_path / "data"), gateway="gw1", writer_name="replay",
        snapshot=lambda: snap, internal_networks=["10.0.0.0/8"], flow_config=FlowConfig(seed=3),
    )  # fmt: skip
    cut: list[int] = []

    def truncate_once() -> None:
        if not cut:
            cut.append(1)
            os.truncate(p, 24)

    s = replay([p], pipe, max_packets=1000, progress=truncate_once)
    pipe.close()
    assert cut and list(s.files_failed) == [str(p)]
    assert "the file shrank to 24 bytes while it was being read" in s.files_failed[str(p)]
    assert s.packets < 40_000


FOREIGN = """
import mmap, os, sys
from capture.read.reader import open_capture
p, q = sys.argv[1], sys.argv[2]
r = open_capture(p, chunk_bytes=65536)
keep = next(r.batches())  # the guard is installed and holds a mapping
with open(q, "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
os.truncate(q, 0)
print("touching", flush=True)
m[0]  # a mapping of Python's own: not the guard's
print("survived", flush=True)
"""


def test_a_sigbus_outside_the_guarded_mappings_still_ends_the_process(tmp_path: Path) -> None:
    """The guard mends only its own mappings: another mapping's fault reaches the handler
    installed before it (faulthandler prints its traceback) and the process dies of SIGBUS as
    it would without the guard."""
    p, q = tmp_path / "f.pcap", tmp_path / "other"
    _write(p, 3000)
    q.write_bytes(b"x" * 65536)
    run = _child(FOREIGN, str(p), str(q))
    assert run.stdout.splitlines() == ["touching"]
    assert run.returncode == -signal.SIGBUS, (run.returncode, run.stderr)
    assert "Fatal Python error: Bus error" in run.stderr


SENT = """
import os, signal, sys
from capture.read.reader import open_capture
r = open_capture(sys.argv[1], chunk_bytes=65536)
keep = next(r.batches())  # the guard is installed and holds a mapping
print("sending", flush=True)
os.kill(os.getpid(), signal.SIGBUS)  # sent, not raised by an access (si_code SI_USER)
print("survived", flush=True)
"""


def test_a_sigbus_sent_by_a_process_is_not_swallowed(tmp_path: Path) -> None:
    """A SIGBUS sent with kill while the guard holds mappings is not mended away: the process
    dies of it, as it would without the guard."""
    p = tmp_path / "f.pcap"
    _write(p, 3000)
    run = _child(SENT, str(p))
    assert run.stdout.splitlines() == ["sending"]
    assert run.returncode == -signal.SIGBUS, (run.returncode, run.stderr)

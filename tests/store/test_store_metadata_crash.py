"""Crash safety of the metadata writer: kill -9 mid-stream, torn journal tails, frame decoding."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from store.journal import HEAD_SIZE, KIND_BATCH, encode_frame, scan_frames
from store.metadata import MetadataWriter, read_stream
from store.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]

WRITER_SCRIPT = r"""
import sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from store.metadata import MetadataWriter
from store.paths import DataPaths

root, prefix, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
nowait = mode.endswith("-nowait")  # rows go in through append_nowait (the event loops' way)
mode = mode.removesuffix("-nowait")
fast = mode == "continuous"
w = MetadataWriter(
    "web", "proxy", paths=DataPaths(root), gateway="gw1",
    flush_interval=0.05 if fast else 3600, parquet_interval=0.2 if fast else 3600,
    parquet_rows=4000 if fast else 10**9, compact_delay=0, compact_interval=0.3)
t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
n = 0
batches = 0
while True:
    for _ in range(97):
        row = {"ts": t0 + timedelta(milliseconds=40 * n), "uid": f"{prefix}{n}",
               "host": "example.org", "bytes_down": n}
        if not nowait:
            w.append(row)
        elif not w.append_nowait(row):
            sys.exit("append_nowait refused a row")
        n += 1
    w.flush()
    batches += 1
    print(n, flush=True)  # every row before this count is accepted
    if not fast and batches >= int(mode):
        time.sleep(3600)
"""


def start_writer(root: Path, prefix: str, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(root), prefix, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def accepted_before_kill(proc: subprocess.Popen[str], at_least: int, delay: float = 0.0) -> int:
    accepted = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        accepted = int(line)
        if accepted >= at_least:
            break
    if delay:
        time.sleep(delay)  # let the writer run on: the kill lands anywhere in its cycle
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return accepted


def restart(root: Path) -> None:
    with MetadataWriter("web", "proxy", paths=DataPaths(root), gateway="gw1"):
        pass


def check_files(root: Path) -> None:
    for path in (root / "metadata").rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), f"leftover {path.name}"
            pq.read_table(path)  # every file reads


def test_kill_9_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    seed = int(os.environ.get("LBM_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    accepted: dict[str, int] = {}
    for round_no in range(6):
        prefix = f"k{round_no}-"
        proc = start_writer(root, prefix, "continuous")
        accepted[prefix] = accepted_before_kill(
            proc, rng.randrange(3_000, 25_000), rng.uniform(0, 0.3)
        )
        restart(root)
        check_files(root)
        uids = read_stream(DataPaths(root), "web").column("uid").to_pylist()
        assert len(uids) == len(set(uids)), f"a row was published twice (seed {seed})"
        present = set(uids)
        for pfx, count in accepted.items():
            missing = [i for i in range(count) if f"{pfx}{i}" not in present]
            assert missing == [], f"{len(missing)} accepted rows of {pfx} lost (seed {seed})"
    # The writer published several files per hour and compacted some of them meanwhile.
    assert len(list((root / "metadata").rglob("*.parquet"))) >= 2
    journal = (root / "journal" / "proxy.journal").read_bytes()
    frames, end = scan_frames(journal)
    assert end == len(journal) and [f.kind for f in frames] == [0]  # only a header left


def test_kill_9_keeps_every_append_nowait_row_accepted_by_flush(tmp_path: Path) -> None:
    root = tmp_path / "data"
    seed = int(os.environ.get("LBM_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    accepted: dict[str, int] = {}
    for round_no in range(3):
        prefix = f"n{round_no}-"
        proc = start_writer(root, prefix, "continuous-nowait")
        accepted[prefix] = accepted_before_kill(
            proc, rng.randrange(2_000, 15_000), rng.uniform(0, 0.3)
        )
        assert proc.returncode == -signal.SIGKILL  # killed, not stopped by a refused row
        restart(root)
        check_files(root)
        uids = read_stream(DataPaths(root), "web").column("uid").to_pylist()
        assert len(uids) == len(set(uids)), f"a row was published twice (seed {seed})"
        present = set(uids)
        for pfx, count in accepted.items():
            missing = [i for i in range(count) if f"{pfx}{i}" not in present]
            assert missing == [], f"{len(missing)} accepted rows of {pfx} lost (seed {seed})"


def _journal_only_writer(root: Path, flushes: int) -> int:
    """A writer that flushes `flushes` batches into the journal (no Parquet yet), killed."""
    proc = start_writer(root, "j", str(flushes))
    return accepted_before_kill(proc, 97 * flushes)


def test_torn_tail_of_an_unfinished_append_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "data"
    accepted = _journal_only_writer(root, 2)
    assert accepted == 194
    journal = root / "journal" / "proxy.journal"
    assert not list((root / "metadata").rglob("*.parquet"))  # rows only in the journal
    torn = encode_frame(KIND_BATCH, 3, b"\x03web" + os.urandom(300))
    with open(journal, "ab") as fh:
        fh.write(torn[: len(torn) - 40])  # the append a crash cut off
    restart(root)
    uids = read_stream(DataPaths(root), "web").column("uid").to_pylist()
    assert sorted(uids) == sorted(f"j{i}" for i in range(accepted))
    check_files(root)


def test_journal_truncated_mid_record_keeps_the_frames_before(tmp_path: Path) -> None:
    root = tmp_path / "data"
    accepted = _journal_only_writer(root, 3)
    journal = root / "journal" / "proxy.journal"
    data = journal.read_bytes()
    frames, end = scan_frames(data)
    assert end == len(data) and len(frames) == 4  # header + one frame per flush
    last = len(data) - (HEAD_SIZE + len(frames[-1].payload))
    cut = last + HEAD_SIZE + len(frames[-1].payload) // 2
    os.truncate(journal, cut)
    restart(root)
    uids = read_stream(DataPaths(root), "web").column("uid").to_pylist()
    assert sorted(uids) == sorted(f"j{i}" for i in range(accepted - 97))
    check_files(root)
    restart(root)  # a second start replays nothing again
    assert read_stream(DataPaths(root), "web").num_rows == accepted - 97


frames_strategy = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(max_size=300)), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(frames_strategy, st.data())
def test_framing_round_trip_and_torn_prefixes(
    frames: list[tuple[int, int, bytes]], data: st.DataObject
) -> None:
    blob = b"".join(encode_frame(k, s, p) for k, s, p in frames)
    decoded, end = scan_frames(blob)
    assert [(f.kind, f.seq, f.payload) for f in decoded] == frames
    assert end == len(blob)
    # Any truncation decodes to a prefix of the frames, never to a wrong frame.
    cut = data.draw(st.integers(0, len(blob)))
    part, part_end = scan_frames(blob[:cut])
    assert [(f.kind, f.seq, f.payload) for f in part] == frames[: len(part)]
    assert part_end <= cut
    # A flipped byte is caught: what decodes is still a prefix of the original frames.
    if blob:
        pos = data.draw(st.integers(0, len(blob) - 1))
        bad = bytearray(blob)
        bad[pos] ^= data.draw(st.integers(1, 255))
        got, _ = scan_frames(bytes(bad))
        assert [(f.kind, f.seq, f.payload) for f in got] == frames[: len(got)]
        assert len(got) < len(frames) or not frames

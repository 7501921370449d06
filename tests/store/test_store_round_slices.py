"""A round's large hour is written as several files at once (`store.roundfiles`): every row
once and in order, and a slice that fails leaves nothing published and loses no row."""

from __future__ import annotations

import errno
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import compact as cp
from store import roundfiles
from store.metadata import MetadataWriter, read_stream
from store.paths import DataPaths

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ROWS = 3_500


def _rows(n: int) -> dict[str, list[Any]]:
    return {
        "ts": [T0 + timedelta(milliseconds=100 * i) for i in range(n)],  # one hour
        "uid": [f"C{i}" for i in range(n)],
        "host": ["example.org"] * n,
        "bytes_down": list(range(n)),
    }


def _writer(paths: DataPaths) -> MetadataWriter:
    return MetadataWriter(
        "web", "proxy", paths=paths, gateway="gw1", parquet_interval=3600, parquet_rows=10**9
    )


def _published(paths: DataPaths) -> list[Path]:
    files = cp.visible_files(paths.metadata, "web")
    return sorted(files, key=lambda p: cp.parse_name(p.name).seq)  # type: ignore[union-attr]


def _hidden(paths: DataPaths) -> list[Path]:
    return [p for p in paths.metadata.rglob(".*") if p.is_file()]


@pytest.fixture
def three_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of at least 1,000 rows on three threads, whatever this machine's cores."""
    monkeypatch.setattr(roundfiles, "SLICE_ROWS", 1_000)
    monkeypatch.setattr(roundfiles, "WRITE_THREADS", 3)


def test_slices_cut_a_table_in_order_and_leave_a_small_one_whole() -> None:
    t = pa.table({"i": list(range(10))})
    assert roundfiles.slices(t, threads=4) == [t]  # under 2 x SLICE_ROWS: one file
    big = pa.table({"i": list(range(3 * roundfiles.SLICE_ROWS + 5))})
    parts = roundfiles.slices(big, threads=2)
    assert len(parts) == 2 and all(p.num_rows >= roundfiles.SLICE_ROWS for p in parts)
    assert pa.concat_tables(parts).column("i").to_pylist() == big.column("i").to_pylist()
    assert len(roundfiles.slices(big, threads=8)) == 3  # never a slice under SLICE_ROWS


def test_a_large_hour_is_published_as_slices_written_at_once_each_row_once(
    tmp_path: Path, three_slices: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(tmp_path / "data")
    threads: set[str] = set()
    write = roundfiles.write_temp

    def spy(final: Path, table: pa.Table) -> Path:
        threads.add(threading.current_thread().name)
        return write(final, table)

    monkeypatch.setattr(roundfiles, "write_temp", spy)
    with _writer(paths) as w:
        w.append_batch(_rows(ROWS))
    files = _published(paths)
    assert len(files) == 3 and len({f.parent for f in files}) == 1  # one hour, three slices
    assert len(threads) == 3 and all(t.startswith("round-write") for t in threads)
    # the files in sequence order hold the rows in the order they were appended
    uids = [u for f in files for u in pq.read_table(f).column("uid").to_pylist()]
    assert uids == [f"C{i}" for i in range(ROWS)]
    assert sorted(read_stream(paths, "web").column("bytes_down").to_pylist()) == list(range(ROWS))
    assert _hidden(paths) == []  # no temp file left behind


def test_a_slice_that_fails_leaves_nothing_published_and_the_rows_are_kept(
    tmp_path: Path, three_slices: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(tmp_path / "data")
    real = pq.write_table
    calls = {"n": 0}
    lock = threading.Lock()

    def second_fails(table: pa.Table, where: Any, **kw: Any) -> None:
        with lock:
            calls["n"] += 1
            mine = calls["n"]
        if mine == 2:  # one slice's disk fills up after it began its file
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, where, **kw)

    monkeypatch.setattr(roundfiles.pq, "write_table", second_fails)
    w = _writer(paths)
    w.append_batch(_rows(ROWS))
    with pytest.raises(OSError, match="No space left"):
        w.publish()
    assert calls["n"] == 3  # the other slices ran to their end before the error came back
    assert _published(paths) == [] and _hidden(paths) == []  # no slice, no temp file
    assert not list(paths.root.rglob("*.commit"))
    monkeypatch.setattr(roundfiles.pq, "write_table", real)
    w.close()  # the disk has room again: the same rows are published, once
    got = read_stream(paths, "web").column("uid").to_pylist()
    assert sorted(got) == sorted(f"C{i}" for i in range(ROWS))

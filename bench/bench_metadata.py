"""Benchmark: metadata rows/s through MetadataWriter vs a bare pyarrow.parquet.write_table.

Run: .venv/bin/python bench/bench_metadata.py [--rows N]
Prints, for the same rows in the same run:
  - baseline: pq.write_table(table, zstd) of the ready-made Arrow table;
  - writer, append_batch: the table given as RecordBatches of 65536 rows (capture's route),
    then close() (journal fsynced, Parquet published);
  - writer, append_batch with flush() after each batch: every row goes through the journal
    (Arrow IPC, zstd, fsynced) and then to Parquet;
  - writer, append(row): the rows as dicts one at a time, then close();
  - writer, append_nowait(row): the same through the event loops' call (none refused: the
    queue holds them all; the figure shows what the never-waiting check costs);
  - a second baseline for the row path: pa.Table.from_pylist + write_table (what any Python
    code holding dicts pays anyway).
Goal: writer >= 0.5x of the bare write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store.metadata import MetadataWriter, read_stream
from store.paths import DataPaths
from store.schemas import schema


def make_rows(n: int) -> list[dict[str, object]]:
    t0 = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC)
    return [
        {
            "ts": t0 + dt.timedelta(microseconds=i * 3000),
            "uid": f"C{i:012d}",
            "principal": f"p{i % 1000:05d}",
            "client_ip": f"10.0.{i % 256}.{i % 200}",
            "client_port": 40000 + i % 20000,
            "server_ip": "93.184.216.34",
            "server_port": 443,
            "proto": "tcp",
            "service": "ssl",
            "duration": 0.5 + i % 7,
            "orig_bytes": i * 3,
            "resp_bytes": i * 7,
            "conn_state": "SF",
            "history": "ShADadFf",
            "orig_pkts": 10,
            "orig_ip_bytes": 900,
            "resp_pkts": 12,
            "resp_ip_bytes": 15000,
            "server_name": f"host{i % 500}.example.com",
            "tls_version": "TLSv1.3",
            "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        }
        for i in range(n)
    ]


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best of `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    n = args.rows
    rows = make_rows(n)
    sch = schema("flow")
    full_rows = [{**r, "gateway": "gw1", "refs": [], "record_ids": []} for r in rows]
    table = pa.Table.from_pylist(full_rows, schema=sch)
    work = Path(tempfile.mkdtemp(prefix="lbm-bench-"))
    try:
        base = timed(lambda: pq.write_table(table, work / "bare.parquet", compression="zstd"))
        base_rows = timed(
            lambda: pq.write_table(
                pa.Table.from_pylist(full_rows, schema=sch),
                work / "bare2.parquet",
                compression="zstd",
            )
        )

        runs = iter(range(1000))

        def fresh() -> DataPaths:
            return DataPaths(work / f"run{next(runs)}")

        def via_batches(flush_each: bool = False) -> None:
            with MetadataWriter("flow", "bench", paths=fresh(), gateway="gw1") as w:
                for batch in table.to_batches(max_chunksize=65_536):
                    w.append_batch(batch)
                    if flush_each:
                        w.flush()

        def via_rows() -> None:
            with MetadataWriter("flow", "bench", paths=fresh(), gateway="gw1") as w:
                append = w.append
                for row in rows:
                    append(row)

        calls = [0.0]

        def via_rows_nowait() -> None:
            with MetadataWriter("flow", "bench", paths=fresh(), gateway="gw1") as w:
                append_nowait = w.append_nowait
                start = time.perf_counter()
                for row in rows:
                    if not append_nowait(row):
                        raise SystemExit("append_nowait refused a row: raise queue_limit")
                calls[0] = time.perf_counter() - start  # what the caller's loop spent
                assert w.gaps == 0

        t_batch = timed(via_batches)
        t_journal = timed(lambda: via_batches(flush_each=True))
        t_rows = timed(via_rows, repeat=1)
        t_nowait = timed(via_rows_nowait, repeat=1)
        for path in work.glob("run*"):
            assert read_stream(DataPaths(path), "flow").num_rows == n
    finally:
        shutil.rmtree(work)

    def rate(t: float) -> str:
        return f"{n / t:>12,.0f} rows/s"

    print(f"rows: {n:,} (flow stream, {len(sch)} columns)")
    print(f"baseline  pq.write_table(zstd)            {rate(base)}")
    print(
        f"writer    append_batch + close            {rate(t_batch)}   ratio {base / t_batch:.2f}x"
    )
    print(
        f"writer    append_batch + flush() each + close {rate(t_journal)}   "
        f"ratio {base / t_journal:.2f}x  (every row through the fsynced journal)"
    )
    print(f"baseline  from_pylist + write_table       {rate(base_rows)}")
    print(
        f"writer    append(row) + close             {rate(t_rows)}   "
        f"ratio {base / t_rows:.2f}x vs bare write, {base_rows / t_rows:.2f}x vs "
        f"from_pylist+write"
    )
    print(
        f"writer    append_nowait(row) + close      {rate(t_nowait)}   "
        f"ratio {base / t_nowait:.2f}x vs bare write, {t_rows / t_nowait:.2f}x vs append(row)"
    )
    print(
        f"caller    append_nowait calls alone       {rate(calls[0])}   "
        f"{calls[0] / n * 1e6:.2f} us a call in the caller's thread"
    )


if __name__ == "__main__":
    main()

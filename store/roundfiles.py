"""The files of one publication round, written under hidden temp names (`store.compact`).

A round's files are written at once, on up to `WRITE_THREADS` threads: pyarrow encodes and
compresses a Parquet file without the GIL, and each file is fsynced on its own thread. A large
hour of one stream is cut into several files for that (`slices`): the final round of a 2M-packet
replay (52,040 flow rows) took 0.065-0.072 s on one thread and 0.046-0.049 s as two files on two
cores (docs/capture-io.md: the replay's end-to-end time moved less than its noise). Compaction
merges the files later, as it merges a round's files anyway.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store.fsutil import create_private, ensure_dir, fsync_dir
from store.schemas import dictionary_columns

COMPRESSION = "zstd"
WRITE_THREADS = min(4, os.cpu_count() or 1)  # files of a round written at once
SLICE_ROWS = 16_384  # an hour's rows are cut into slices of at least this many (`slices`)


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(final: Path, table: pa.Table) -> Path:
    """Write `table` (its schema metadata included) to the hidden temp name of `final`, fsynced,
    mode 0600."""
    ensure_dir(final.parent)
    tmp = temp_path(final)
    create_private(tmp)
    pq.write_table(
        table, tmp, compression=COMPRESSION, use_dictionary=dictionary_columns(table.schema)
    )
    fsync_file(tmp)
    return tmp


def slices(table: pa.Table, threads: int = 0) -> list[pa.Table]:
    """`table` in consecutive slices (rows in order, no copy) to be written as files at once:
    as many as `threads` (default `WRITE_THREADS`), each of at least `SLICE_ROWS` rows; one
    (the table) when smaller."""
    n = table.num_rows
    k = max(1, min(threads or WRITE_THREADS, n // SLICE_ROWS))
    if k == 1:
        return [table]
    step = -(-n // k)
    return [table.slice(i, step) for i in range(0, n, step)]


def write_temps(files: list[tuple[Path, pa.Table]]) -> list[Path]:
    """Write each (final path, table) to its temp file (`write_temp`), at once on up to
    `WRITE_THREADS` threads, and fsync their directories. Every write has ended when this
    returns or raises (the first error is raised); the caller removes the temp files on error
    (`temp_path` of each final path)."""
    for parent in dict.fromkeys(final.parent for final, _ in files):
        ensure_dir(parent)  # here, not raced by the threads
    if len(files) < 2 or WRITE_THREADS < 2:
        temps = [write_temp(final, table) for final, table in files]
    else:
        workers = min(len(files), WRITE_THREADS)
        with ThreadPoolExecutor(workers, thread_name_prefix="round-write") as pool:
            futures = [pool.submit(write_temp, final, table) for final, table in files]
            temps = [f.result() for f in futures]  # leaving the block waits for all of them
    for parent in dict.fromkeys(tmp.parent for tmp in temps):
        fsync_dir(parent)
    return temps

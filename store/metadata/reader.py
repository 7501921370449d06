"""Reading a metadata stream back: `read_stream` (every published row, as one Arrow table).

Queries by people go through DuckDB on the same files (docs/metadata.md); this is the store's
own reader, used by tests, capture summaries and the evidence tools.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from store import compact as cp
from store.paths import DataPaths
from store.schemas import schema


def read_stream(paths: DataPaths, stream: str) -> pa.Table:
    """Every published row of `stream` (all partitions), in the stream's schema.

    A compaction running meanwhile may remove a listed file; the listing is then retried.
    """
    sch = schema(stream)
    for attempt in range(5):
        files = [str(p) for p in cp.visible_files(Path(paths.metadata), stream)]
        if not files:
            return sch.empty_table()
        try:
            return ds.dataset(files, schema=sch, format="parquet").to_table()
        except OSError:  # pyarrow reports a vanished file as FileNotFoundError or OSError
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")

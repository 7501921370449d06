"""Reading a metadata stream back: `read_stream` (every published row, as one Arrow table).

Queries by people go through DuckDB on the same files (docs/metadata.md); this is the store's
own reader, used by tests, capture summaries and the evidence tools. With an `s3://` metadata
root it reads the objects there (what has been uploaded; not this gateway's outbox).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from store import compact as cp
from store.metadata.upload import open_remote
from store.objectstore import StoreSettings, is_object_uri
from store.paths import DataPaths
from store.schemas import schema


def read_stream(paths: DataPaths, stream: str) -> pa.Table:
    """Every published row of `stream` (all partitions), in the stream's schema.

    A compaction running meanwhile may remove a listed file; the listing is then retried.
    """
    sch = schema(stream)
    if is_object_uri(paths.store_settings.metadata_root):
        return _read_remote(paths.store_settings, stream)
    for attempt in range(5):
        files = [str(p) for p in cp.visible_files(Path(paths.store_settings.metadata_root), stream)]
        if not files:
            return sch.empty_table()
        try:
            return ds.dataset(files, schema=sch, format="parquet").to_table()
        except OSError:  # pyarrow reports a vanished file as FileNotFoundError or OSError
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _read_remote(settings: StoreSettings, stream: str) -> pa.Table:
    """Every object of `stream` below the object-store root (never removed by a gateway, so
    the listing needs no retry)."""
    import pyarrow.fs as pafs

    root = open_remote(settings)
    base = root.path(f"stream={stream}")
    selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
    files = [
        info.path
        for info in root.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and cp.parse_name(info.base_name) is not None
    ]
    sch = schema(stream)
    if not files:
        return sch.empty_table()
    return ds.dataset(files, schema=sch, format="parquet", filesystem=root.fs).to_table()

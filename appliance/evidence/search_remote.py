"""Search over a metadata root on S3-compatible object storage (`[store] metadata_root =
"s3://BUCKET/PREFIX"`), with the same views, access rules and sandbox as a local root.

Nothing is downloaded up front. For each stream the search lists only the partitions its time
range needs: one LIST of `stream=S/` for the `date=` prefixes, then one recursive LIST per date
that overlaps `--from`/`--to`; hours outside the range are dropped from that listing, so their
objects are never opened. The remaining objects become a `pyarrow.dataset` (the root's
S3FileSystem, the stream's schema, each file's size from the listing so no HEAD per object)
registered in DuckDB under an unguessable name; the stream's view reads it, and DuckDB pushes
its column choice and filters into pyarrow's scan, which fetches only the row groups and columns
it needs by ranged GETs.

The credentials stay inside pyarrow's S3FileSystem: DuckDB gets no httpfs extension, no secret
and no external access (`sqlguard.lock_down` with no allowed directory), and `--sql` may name
only the views (sqlguard.check_select), never the registered datasets behind them.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from appliance.evidence.search_views import hour_start
from store import schemas
from store.objectstore import StoreRoot, StoreSettings, is_object_uri, open_root

if TYPE_CHECKING:
    import duckdb

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0
ATTEMPTS = 3
LISTERS = 8  # concurrent LIST requests (one per date partition)

MetadataRoot = Path | StoreRoot
"""A local metadata folder, or an object-store root opened on its S3FileSystem."""


def open_metadata_root(settings: StoreSettings) -> MetadataRoot:
    """The configured metadata root: a local Path, or an S3 root whose requests time out
    (a store that does not answer fails the search instead of hanging it)."""
    if not is_object_uri(settings.metadata_root):
        return Path(settings.metadata_root)
    return open_root(
        settings.metadata_root,
        settings.s3,
        connect_timeout=CONNECT_TIMEOUT_S,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
    )


def _listing(root: StoreRoot, path: str, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    return list(root.fs.get_file_info(selector))


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _day_overlaps(name: str, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    begins = hour_start(name, "hour=00")
    if begins is None:
        return False
    return not ((start and begins + dt.timedelta(days=1) <= start) or (end and begins >= end))


def _hour_overlaps(
    date_name: str, hour_name: str, start: dt.datetime | None, end: dt.datetime | None
) -> bool:
    begins = hour_start(date_name, hour_name)
    if begins is None:
        return False
    return not ((start and begins + dt.timedelta(hours=1) <= start) or (end and begins >= end))


def _day_files(
    root: StoreRoot, date_path: str, start: dt.datetime | None, end: dt.datetime | None
) -> list[pafs.FileInfo]:
    base = date_path.rstrip("/") + "/"
    out = []
    for info in _listing(root, date_path, recursive=True):
        if info.type != pafs.FileType.File:
            continue
        parts = info.path[len(base) :].split("/") if info.path.startswith(base) else []
        if len(parts) != 2 or not parts[1].endswith(".parquet") or parts[1][0] in "._":
            continue
        if _hour_overlaps(_name(date_path), parts[0], start, end):
            out.append(info)
    return out


def partition_objects(
    root: StoreRoot,
    streams: Sequence[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> dict[str, list[pafs.FileInfo]]:
    """Per stream, the Parquet objects in hours that overlap [start, end), sorted by key.
    Raises OSError when the store cannot be listed."""
    days: list[tuple[str, str]] = []
    for stream in streams:
        for info in _listing(root, root.path(f"stream={stream}"), recursive=False):
            if info.type == pafs.FileType.Directory and _day_overlaps(_name(info.path), start, end):
                days.append((stream, info.path))
    out: dict[str, list[pafs.FileInfo]] = {s: [] for s in streams}
    with ThreadPoolExecutor(max_workers=LISTERS) as pool:
        found = pool.map(lambda day: _day_files(root, day[1], start, end), days)
        for (stream, _), files in zip(days, found, strict=True):
            out[stream].extend(files)
    for files in out.values():
        files.sort(key=lambda i: i.path)
    return out


def stream_dataset(root: StoreRoot, stream: str, files: list[pafs.FileInfo]) -> ds.Dataset:
    """A dataset over `files` with the stream's schema (a file lacking a newer column reads
    it as null); no object is opened until DuckDB scans it."""
    fmt = ds.ParquetFileFormat()
    fragments = [fmt.make_fragment(i.path, root.fs, file_size=i.size) for i in files]
    return ds.FileSystemDataset(fragments, schemas.schema(stream), fmt, root.fs)


def register(con: duckdb.DuckDBPyConnection, stream: str, dataset: ds.Dataset) -> str:
    """Register `dataset` in `con` under a fresh, unguessable name and return the name (the
    view reads it; `--sql` cannot: sqlguard allows only the views' names)."""
    name = f"_lbm_{stream}_{secrets.token_hex(8)}"
    con.register(name, dataset)
    return name

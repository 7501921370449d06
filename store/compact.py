"""Parquet file layout of the metadata streams, crash-safe publication, and compaction.

Layout: metadata/stream=NAME/date=YYYY-MM-DD/hour=HH/GATEWAY__WRITER__SEQ.parquet, partitioned by
each row's `ts`. SEQ is per (gateway, writer), ten digits, increasing across restarts.

Nothing half-written is ever visible: files are written under hidden names (`.NAME.tmp`;
hive readers of pyarrow and DuckDB skip names starting with `.` or `_`, and the `.tmp` suffix
does not match `*.parquet` globs), fsynced, then renamed.

A *round* publishes several files at once (one per stream and hour, a large hour cut into
slices written at once: `store.roundfiles`) from the journal: temp files are written and
fsynced, then a commit record `journal/WRITER.commit` lists them, then they are renamed into
place; the caller then empties the journal and removes the record.
`recover_round` rolls a crashed round forward, so rows are never both in the journal and in a
published file without the commit record saying so (no duplicates, no loss).

Compaction (only files whose gateway and writer fields equal the caller's, exactly) writes the
merged file hidden, records `journal/WRITER.compact`, hides the inputs (rename to `.NAME.replaced`),
publishes the merged file, then deletes the hidden inputs. A query never sees an input and the
merged file together; a crash in between is rolled forward by `recover_compaction` on start.
The merged file's metadata lists the inputs it replaces (`lbm.replaces`).

Modes: every file written here is 0600 and every directory made here 0700, set explicitly
(`store.fsutil`), so the process umask cannot widen them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store import StoreError
from store.convert import conform
from store.fsutil import atomic_write, create_private, fsync_dir
from store.roundfiles import COMPRESSION, fsync_file, slices, temp_path, write_temps
from store.schemas import dictionary_columns, schema

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
NAME_RE = re.compile(r"^([a-z0-9][a-z0-9._-]*)__([a-z0-9][a-z0-9._-]*)__(\d{10,})\.parquet$")
HOUR_US = 3_600_000_000


class RoundIncomplete(StoreError):
    """A round's commit record is written but publishing failed; restart recovers it."""


def check_id(kind: str, value: str) -> str:
    """Gateway and writer ids: lower case `[a-z0-9][a-z0-9._-]*` without `__` (the separator)."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or "__" in value:
        raise StoreError(f"{kind} id {value!r} must match [a-z0-9][a-z0-9._-]* without '__'")
    return value


@dataclass(frozen=True)
class FileName:
    gateway: str
    writer: str
    seq: int

    @property
    def name(self) -> str:
        return f"{self.gateway}__{self.writer}__{self.seq:010d}.parquet"


def parse_name(name: str) -> FileName | None:
    m = NAME_RE.fullmatch(name)
    if not m or "__" in m.group(1) or "__" in m.group(2):
        return None
    return FileName(m.group(1), m.group(2), int(m.group(3)))


def hour_start(hour_index: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=hour_index)


def hour_dir(metadata_root: Path, stream: str, hour_index: int) -> Path:
    start = hour_start(hour_index)
    return metadata_root / f"stream={stream}" / f"date={start:%Y-%m-%d}" / f"hour={start:%H}"


def hour_of_dir(path: Path) -> int | None:
    """Inverse of `hour_dir` for .../date=YYYY-MM-DD/hour=HH; None if not such a directory."""
    try:
        date = datetime.strptime(path.parent.name, "date=%Y-%m-%d").replace(tzinfo=UTC)
        hour = int(path.name.removeprefix("hour="))
    except ValueError:
        return None
    if not path.name.startswith("hour=") or not 0 <= hour < 24:
        return None
    return int((date - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() // 3600) + hour


def _filter(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """The rows of `table` where `mask` is true. Arrow's "filter" called directly: `Table.filter`
    imports `pyarrow.compute` first, whose import (wrappers made for ~290 functions, their
    docstrings parsed) took 20 ms of a replay's last round on the main thread, against 5 ms
    for the C++ function itself (docs/capture-io.md)."""
    try:
        from pyarrow._compute import call_function
    except ImportError:  # a pyarrow without it: the public way
        return table.filter(pa.array(mask))
    result: pa.Table = call_function("filter", [table, pa.array(mask)])
    return result


def split_by_hour(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """Split a table into (hour index since the epoch, rows of that hour), by `ts`. The hours
    are found in numpy (no `pyarrow.compute` import for the usual round within one hour)."""
    if table.num_rows == 0:
        return []
    micros = table.column("ts").to_numpy().astype("datetime64[us]").view(np.int64)
    hours = micros // HOUR_US
    lo, hi = int(hours.min()), int(hours.max())
    if lo == hi:
        return [(lo, table)]
    return [(int(h), _filter(table, hours == h)) for h in np.unique(hours).tolist()]


def round_parts(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """`split_by_hour`, an hour of many rows cut into `slices` (its rows in order): a round
    writes them as files at once (`write_round`)."""
    return [(hour, piece) for hour, part in split_by_hour(table) for piece in slices(part)]


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def write_round(
    metadata_root: Path,
    commit: Path,
    files: list[tuple[Path, pa.Table]],
    generation: bytes,
    upto: int,
) -> None:
    """Publish `files` (final path, table) as one round committed against journal frames
    `generation`/1..`upto`. The caller empties the journal and then calls `finish_round`."""
    try:
        write_temps(files)  # at once, on several threads (`store.roundfiles`)
        record = {
            "generation": generation.hex(),
            "upto": upto,
            "files": [_rel(metadata_root, final) for final, _ in files],
        }
        atomic_write(commit, json.dumps(record).encode())
    except BaseException:
        if commit.exists():  # committed after all (only the directory fsync failed)
            raise RoundIncomplete(
                f"a metadata round is committed but not published; "
                f"{commit.name} will be rolled forward on restart"
            ) from None
        for final, _ in files:  # every temp file, also one whose write failed
            temp_path(final).unlink(missing_ok=True)
        raise
    try:
        _publish_round(metadata_root, record)
    except OSError as exc:
        raise RoundIncomplete(
            f"publishing a metadata round failed ({exc.strerror}); "
            f"{commit.name} will be rolled forward on restart"
        ) from None


def _publish_round(metadata_root: Path, record: dict[str, object]) -> None:
    dirs: set[Path] = set()
    for rel in record["files"]:  # type: ignore[attr-defined]
        final = metadata_root / str(rel)
        tmp = temp_path(final)
        if tmp.exists():
            os.replace(tmp, final)
        dirs.add(final.parent)
    for d in dirs:
        fsync_dir(d)


def finish_round(commit: Path) -> None:
    commit.unlink(missing_ok=True)
    fsync_dir(commit.parent)


def recover_round(metadata_root: Path, commit: Path) -> tuple[bytes, int] | None:
    """Roll forward a round cut off by a crash; returns its (generation, upto) if there was one.

    Journal frames of that generation up to `upto` are already published and must not be
    replayed again.
    """
    if not commit.exists():
        return None
    try:
        record = json.loads(commit.read_bytes())
        generation = bytes.fromhex(record["generation"])
        upto = int(record["upto"])
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{commit} is not a valid commit record; inspect it by hand") from None
    _publish_round(metadata_root, record)
    return generation, upto


def visible_files(metadata_root: Path, stream: str) -> list[Path]:
    """Every published Parquet file of `stream` (hidden and temp names excluded), sorted."""
    base = metadata_root / f"stream={stream}"
    if not base.is_dir():
        return []
    return sorted(
        p for p in base.glob("date=*/hour=*/*.parquet") if not p.name.startswith((".", "_"))
    )


def iter_own(
    metadata_root: Path, gateway: str, writer: str
) -> Iterator[tuple[str, Path, FileName | None]]:
    """(stream, path, parsed name or None for own hidden leftovers) of this writer's files."""
    if not metadata_root.is_dir():
        return
    for sdir in metadata_root.glob("stream=*"):
        stream = sdir.name.removeprefix("stream=")
        for path in sdir.glob("date=*/hour=*/*"):
            name = path.name
            if name.startswith("."):
                inner = name[1:].removesuffix(".tmp").removesuffix(".replaced")
                parsed = parse_name(inner)
                if parsed and parsed.gateway == gateway and parsed.writer == writer:
                    yield stream, path, None
                continue
            parsed = parse_name(name)
            if parsed and parsed.gateway == gateway and parsed.writer == writer:
                yield stream, path, parsed


def scan_own(
    metadata_root: Path, gateway: str, writer: str
) -> tuple[int, dict[tuple[str, int], int]]:
    """On start: (highest own SEQ, own file count per (stream, hour)); deletes own hidden
    leftovers of crashed writes (call after the commit records were rolled forward)."""
    seq = 0
    counts: dict[tuple[str, int], int] = {}
    for stream, path, parsed in iter_own(metadata_root, gateway, writer):
        if parsed is None:
            path.unlink(missing_ok=True)
            continue
        seq = max(seq, parsed.seq)
        hour = hour_of_dir(path.parent)
        if hour is not None:
            counts[(stream, hour)] = counts.get((stream, hour), 0) + 1
    return seq, counts


def compact_hour(
    metadata_root: Path,
    commit: Path,
    stream: str,
    hour: int,
    gateway: str,
    writer: str,
    next_seq: Callable[[], int],
) -> bool:
    """Compact the own files of one stream and hour if there are two or more."""
    hdir = hour_dir(metadata_root, stream, hour)
    own = sorted(
        p
        for p in hdir.glob("*.parquet")
        if (n := parse_name(p.name)) and n.gateway == gateway and n.writer == writer
    )
    if len(own) < 2:
        return False
    final = hdir / FileName(gateway, writer, next_seq()).name
    compact(metadata_root, commit, own, final, stream, gateway, writer)
    return True


def recover_compaction(commit: Path, metadata_root: Path) -> None:
    """Finish a compaction cut off by a crash (roll forward: hide inputs, publish, delete)."""
    if not commit.exists():
        return
    try:
        record = json.loads(commit.read_bytes())
        final = metadata_root / record["merged"]
        inputs = [metadata_root / rel for rel in record["inputs"]]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{commit} is not a valid compaction record; inspect it") from None
    _finish_compaction(final, inputs)
    commit.unlink(missing_ok=True)
    fsync_dir(commit.parent)


def _hidden(path: Path) -> Path:
    return path.with_name(f".{path.name}.replaced")


def _finish_compaction(final: Path, inputs: list[Path]) -> None:
    tmp = temp_path(final)
    if tmp.exists():
        for path in inputs:
            if path.exists():
                os.replace(path, _hidden(path))
        fsync_dir(final.parent)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    elif not final.exists():
        # The merged file is gone (removed by hand?): put the inputs back rather than lose rows.
        for path in inputs:
            if _hidden(path).exists():
                os.replace(_hidden(path), path)
        fsync_dir(final.parent)
        return
    for path in inputs:
        _hidden(path).unlink(missing_ok=True)
    fsync_dir(final.parent)


def compact(
    metadata_root: Path,
    commit: Path,
    inputs: list[Path],
    final: Path,
    stream: str,
    gateway: str,
    writer: str,
) -> int:
    """Merge `inputs` (own files of one stream and hour) into `final`; returns rows written.

    Streams row groups, so memory stays flat in the size of the hour.
    """
    for path in inputs:
        parsed = parse_name(path.name)
        if parsed is None or parsed.gateway != gateway or parsed.writer != writer:
            raise StoreError(f"refusing to compact {path.name}: not written by {writer!r}")
    meta = dict(schema(stream).metadata or {})
    meta[b"lbm.gateway"] = gateway.encode()
    meta[b"lbm.writer"] = writer.encode()
    meta[b"lbm.replaces"] = json.dumps(sorted(p.name for p in inputs)).encode()
    out_schema = schema(stream).with_metadata(meta)
    tmp = temp_path(final)
    rows = 0
    try:
        create_private(tmp)
        with pq.ParquetWriter(
            tmp,
            out_schema,
            compression=COMPRESSION,
            use_dictionary=dictionary_columns(out_schema),
        ) as out:
            for path in inputs:
                pf = pq.ParquetFile(path)
                for i in range(pf.num_row_groups):
                    group = conform(stream, pf.read_row_group(i))
                    out.write_table(group.replace_schema_metadata(meta))
                    rows += group.num_rows
        fsync_file(tmp)
        record = {
            "merged": _rel(metadata_root, final),
            "inputs": [_rel(metadata_root, p) for p in inputs],
        }
        atomic_write(commit, json.dumps(record).encode())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _finish_compaction(final, inputs)
    commit.unlink(missing_ok=True)
    fsync_dir(commit.parent)
    return rows

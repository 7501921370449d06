"""Metadata streams into Parquet: `MetadataWriter`, its background engine, and `read_stream`.

    with MetadataWriter("web", "proxy", paths=paths, gateway="gw1", audit=audit_log) as w:
        w.append({"ts": now, "uid": "C1", "host": "example.org", ...})   # threads, capture
        ok = w.append_nowait({...})     # asyncio event loops: never waits, False = refused
        w.flush()                       # rows now "accepted" (from asyncio: await w.aflush())

- `append(row)` checks column names at once (unknown or content-like: `SchemaError` naming the
  column and stream, never a value) and queues the row; `append_batch(...)` takes a RecordBatch,
  Table or dict of columns and validates it once per batch (the capture path's fast route).
- Queue policy: at most `queue_limit` rows wait for the journal. When full, `append` blocks the
  caller up to `block_timeout` seconds for the engine to catch up, then raises `QueueFull`.
  `append_nowait` never waits: it returns False, counts the row in `writer.gaps`, and the gap
  reporter thread records one METADATA_GAP audit entry per overload episode (counts, stream,
  writer and time span; never row content). Rows are never dropped silently.
- A background thread drains the queues at least every `flush_interval` seconds (sooner once
  `max_batch` rows wait): converts them to Arrow in one batch, appends them to
  journal/WRITER.journal and fsyncs. `flush()` does the same synchronously: when it returns,
  every row appended before it is durable ("accepted"). A row whose values do not convert to
  its column types is refused at that point; the next `flush()` on its stream raises
  `SchemaError` naming the column (the other rows are durable regardless).
- Every `parquet_interval` seconds, or once `parquet_rows` rows are journaled, the journal's rows
  are published as Parquet files (a crash-safe round, see `store.compact`) and the journal is
  emptied. So a query sees rows within `parquet_interval` plus a second.
- After an hour closes (`compact_delay` seconds past its end, by `clock`), a compaction thread
  merges this writer's own files of that hour into one.
- Object storage (`[store] metadata_root = s3://...` in `paths.store_settings`): rounds publish
  into a local outbox (journal/WRITER.outbox) every `[store] metadata_publish_seconds`, and an
  upload thread puts each file under the same key on the store in one object, deleting the local
  file once the store has it; no compaction there. Uploads are retried with a backoff; the
  outbox is bounded by `[store] upload_backlog_mb` (then rows stay queued and `append_nowait`
  refuses with reason `store_backlog`); `store_backlog()` counts it. See `upload` and
  docs/objectstore.md.
- One engine (journal, lock, sequence numbers, threads) serves all streams of one writer name in a
  process, so `capture-eth1` can write `flow` and `dns`. A second process with the same writer
  name fails at once (flock on the journal).
- Every file and directory the writer makes is mode 0600 / 0700, whatever the process umask.

Modules: `writer` (MetadataWriter), `front` (per-stream queue, gap episodes), `engine` (journal,
publication rounds, threads), `gaps` (gap reporter thread), `replay` (start-up recovery),
`reader` (read_stream), `upload` (object-store outbox and uploader). Journal framing is
`store.journal`; file layout and rounds `store.compact`.
"""

from typing import TYPE_CHECKING, Any

from store.metadata.front import GapReport
from store.metadata.writer import AuditSink, MetadataWriter, QueueFull

if TYPE_CHECKING:
    from store.metadata.reader import read_stream

__all__ = ["AuditSink", "GapReport", "MetadataWriter", "QueueFull", "read_stream"]


def __getattr__(name: str) -> Any:
    # `read_stream` loads pyarrow.dataset (15-20 ms): writers, such as a capture replay's
    # after its first packet, never read (docs/startup.md)
    if name == "read_stream":
        from store.metadata.reader import read_stream

        return read_stream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

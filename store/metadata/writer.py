"""`MetadataWriter`: the object the channels append metadata rows to (one per stream).

It checks every row's column names at once, queues rows for its engine (`store.metadata.engine`),
and offers three ways in: `append` (may wait, bounded, when the queue is full: threads and the
capture path), `append_nowait` (never waits; refuses and counts under overload: asyncio event
loops), and `append_batch` (many rows at once). `flush`/`aflush` make every appended row durable.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa

from store import SchemaError, StoreError
from store import compact as cp
from store.actor import current_actor
from store.audit import Action
from store.clock import Clock
from store.metadata.engine import _Engine
from store.metadata.front import (
    REASON_QUEUE_FULL,
    REASON_STORE_BACKLOG,
    REASON_WRITER_STOPPED,
    GapReport,
    GapSink,
    _Front,
)
from store.metadata.upload import StoreBacklog
from store.paths import DataPaths
from store.schemas import check_columns, schema


class QueueFull(StoreError):
    """The writer's queue stayed full for `block_timeout` seconds (storage is not keeping up)."""


class AuditSink(Protocol):
    """What the writer needs of an audit log (`store.audit.AuditLog` is one)."""

    def append(
        self, action: Action | str, actor: str, refs: Iterable[str] = (), **fields: Any
    ) -> Any: ...


def _audit_gap(audit: AuditSink, actor: str) -> GapSink:
    def sink(report: GapReport) -> None:
        audit.append(Action.METADATA_GAP, actor, **report.fields())

    return sink


class MetadataWriter:
    """Appends rows of one metadata stream; see `store.metadata` for the guarantees."""

    def __init__(
        self,
        stream: str,
        writer: str,
        *,
        paths: DataPaths,
        gateway: str,
        flush_interval: float = 1.0,
        max_batch: int = 65_536,
        queue_limit: int = 1_000_000,
        block_timeout: float = 5.0,
        parquet_interval: float = 10.0,
        parquet_rows: int = 1_000_000,
        compact_delay: float = 300.0,
        compact_interval: float = 60.0,
        clock: Clock | None = None,
        audit: AuditSink | None = None,
        actor: str | None = None,
        on_gap: GapSink | None = None,
        gap_quiet: float = 2.0,
        gap_report_interval: float = 60.0,
    ) -> None:
        schema(stream)
        self.stream = stream
        self.writer = cp.check_id("writer", writer)
        self.gateway = cp.check_id("gateway", gateway)
        self.block_timeout = block_timeout
        sinks: list[GapSink] = []
        if audit is not None:
            sinks.append(_audit_gap(audit, actor or current_actor()))
        if on_gap is not None:
            sinks.append(on_gap)
        self._front = _Front(stream, gateway, max_batch, queue_limit, tuple(sinks))
        self._closed = False
        self._engine = _Engine.acquire(
            paths,
            writer,
            gateway,
            self._front,
            flush_interval=flush_interval,
            parquet_interval=parquet_interval,
            parquet_rows=parquet_rows,
            compact_delay=compact_delay,
            compact_interval=compact_interval,
            gap_quiet=gap_quiet,
            gap_report_interval=gap_report_interval,
            clock=clock or Clock(),
        )

    # -- appending --------------------------------------------------------------------------
    def _check_row(self, row: Mapping[str, Any]) -> None:
        if not self._front.allowed.issuperset(row):
            check_columns(self.stream, row)
        if row.get("ts") is None or row.get("uid") is None:
            missing = "ts" if row.get("ts") is None else "uid"
            raise SchemaError(f"column {missing!r} is required in metadata stream {self.stream!r}")
        if "gateway" in row and row["gateway"] != self.gateway:
            raise SchemaError(f"column 'gateway' is set by the writer ({self.gateway!r})")

    def append(self, row: Mapping[str, Any]) -> None:
        """Queue one row (a mapping of column -> value; missing columns are null).

        When the queue is full, waits up to `block_timeout` seconds for room, then raises
        `QueueFull`: for threads and capture, never for an asyncio event loop (use
        `append_nowait` there). The mapping is taken over: do not change it after appending.
        """
        self._check_row(row)
        front = self._front
        with front.cond:
            self._wait_for_room(1)
            front.rows.append(row)
            front.queued += 1
            if front.queued >= front.max_batch:
                self._engine.wake.set()

    def append_nowait(self, row: Mapping[str, Any]) -> bool:
        """Queue one row if there is room now; never waits. Returns False if refused.

        Safe from an asyncio event loop: it takes only the stream's queue lock, which nobody
        holds across I/O. True means queued (durable within about `flush_interval`, or at the
        next `flush()`); False means refused under overload (queue full: reason `queue_full`,
        or `store_backlog` while the object store's upload backlog is at its bound; or the
        writer stopped after a failure), counted in `gaps` and reported as a METADATA_GAP
        audit entry per overload episode (counts and times only), written by a background
        thread. Bad columns
        raise `SchemaError` at once, and a closed writer raises `StoreError`, as `append` does.
        The mapping is taken over: do not change it after appending.
        """
        self._check_row(row)
        front, engine = self._front, self._engine
        with front.cond:
            if self._closed:
                raise StoreError(f"metadata writer {self.writer!r} ({self.stream}) is closed")
            if engine.failure:
                reason = REASON_WRITER_STOPPED
            elif front.queued < front.queue_limit:
                front.rows.append(row)
                front.queued += 1
                if front.queued >= front.max_batch and not engine.wake.is_set():
                    engine.wake.set()
                return True
            elif engine.uploader is not None and engine.uploader.over_limit:
                reason = REASON_STORE_BACKLOG
            else:
                reason = REASON_QUEUE_FULL
            opened = front.refuse(reason, engine.clock.now())
        if reason != REASON_WRITER_STOPPED and not engine.wake.is_set():
            engine.wake.set()  # let the flush thread drain now, if it can
        if opened:
            engine.reporter.wake.set()
        return False

    @property
    def gaps(self) -> int:
        """Rows `append_nowait` refused since this writer opened."""
        return self._front.gaps

    def backlog(self) -> tuple[int, float]:
        """Rows queued and not yet taken by the flush thread, and how long the oldest has
        waited at most (seconds since the queue was last emptied; 0 when empty): the lag."""
        front = self._front
        with front.cond:
            queued, since = front.queued, front.last_take
        return queued, (time.monotonic() - since) if queued else 0.0

    def append_batch(self, data: pa.RecordBatch | pa.Table | Mapping[str, Any]) -> None:
        """Queue many rows at once: a RecordBatch, Table or dict of column -> list/array.

        Columns are checked and cast to the schema once per batch; missing columns are null.
        Waits for room as `append` does.
        """
        front = self._front
        batch = front.converter.columns(data)
        if batch is None:
            return
        n = batch.num_rows
        with front.cond:
            self._wait_for_room(n)
            front.batches.append(batch)
            front.queued += n
            if front.queued >= front.max_batch:
                self._engine.wake.set()

    def _wait_for_room(self, n: int) -> None:
        """Called with front.cond held: block (bounded) while the queue is full."""
        front = self._front
        if self._closed:
            raise StoreError(f"metadata writer {self.writer!r} ({self.stream}) is closed")
        if self._engine.failure:
            raise StoreError(self._engine.failure)
        if front.queued + n <= front.queue_limit or front.queued == 0:
            return
        self._engine.wake.set()
        deadline = time.monotonic() + self.block_timeout
        while front.queued and front.queued + n > front.queue_limit:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueFull(
                    f"metadata stream {self.stream!r} (writer {self.writer!r}): queue full "
                    f"({front.queued} rows) for {self.block_timeout:g} s; storage is not "
                    f"keeping up"
                )
            front.cond.wait(left)
        if self._closed:  # closed while this caller waited: its row would never be written
            raise StoreError(f"metadata writer {self.writer!r} ({self.stream}) is closed")

    # -- durability -------------------------------------------------------------------------
    def flush(self) -> None:
        """Return once every row appended before the call is durable (journal fsynced).

        Blocks for the I/O: from asyncio, use `aflush`. Raises SchemaError if rows of this
        stream were refused at conversion since the last call.
        """
        self._engine.flush()
        refused = self._front.take_refused()
        if refused:
            raise SchemaError("; ".join(refused))

    async def aflush(self) -> None:
        """`flush()` for asyncio code, run in a worker thread."""
        import asyncio  # here: a capture replay never loads it (docs/startup.md)

        await asyncio.to_thread(self.flush)

    def publish(self) -> None:
        """Write everything accepted so far to Parquet now (normally periodic)."""
        self._engine.publish(drain=True)

    def store_backlog(self) -> StoreBacklog:
        """With an s3:// metadata root: bytes and files published locally and awaiting upload,
        and failed upload attempts so far (counts only; all 0 for a local root)."""
        return self._engine.store_backlog()

    def wait_uploaded(self, timeout: float) -> bool:
        """With an s3:// metadata root: wait until every published file is on the object
        store (call `publish()` first for rows not yet published). True at once for a local
        root; False if `timeout` seconds passed first (the store is down?)."""
        return self._engine.wait_uploaded(timeout)

    def compact(self) -> int:
        """Compact this writer's files of closed hours now; returns the hours compacted."""
        return self._engine.compact_closed_hours()

    def close(self) -> None:
        """Flush, publish to Parquet, report an open gap episode, and stop the threads once
        no stream of the writer is open. Blocks for the I/O."""
        if self._closed:
            return
        with self._front.cond:
            self._closed = True
        self._engine.release(self.stream)
        refused = self._front.take_refused()
        if refused:
            raise SchemaError("; ".join(refused))

    async def aclose(self) -> None:
        """`close()` for asyncio code, run in a worker thread."""
        import asyncio

        await asyncio.to_thread(self.close)

    def __enter__(self) -> MetadataWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

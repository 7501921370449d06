"""Metadata streams into Parquet: `MetadataWriter`, its background engine, and `read_stream`.

    with MetadataWriter("web", "proxy", paths=paths, gateway="gw1") as w:
        w.append({"ts": now, "uid": "C1", "host": "example.org", ...})   # never blocks for I/O
        w.flush()                                                       # rows now "accepted"

- `append(row)` checks column names at once (unknown or content-like: `SchemaError` naming the
  column and stream, never a value) and queues the row; `append_batch(...)` takes a RecordBatch,
  Table or dict of columns and validates it once per batch (the capture path's fast route).
- Queue policy: at most `queue_limit` rows wait for the journal. When full, `append` blocks the
  caller up to `block_timeout` seconds for the engine to catch up, then raises `QueueFull`.
  Rows are never dropped silently.
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
- One engine (journal, lock, sequence numbers, threads) serves all streams of one writer name in a
  process, so `capture-eth1` can write `flow` and `dns`. A second process with the same writer
  name fails at once (flock on the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.dataset as ds

from store import SchemaError, StoreError
from store import compact as cp
from store.clock import Clock
from store.fsutil import ensure_dir
from store.journal import Journal, decode_batches, encode_batches
from store.paths import DataPaths
from store.schemas import (
    Converter,
    allowed_columns,
    check_columns,
    conform,
    schema,
)

log = logging.getLogger("lbm.store.metadata")


class QueueFull(StoreError):
    """The writer's queue stayed full for `block_timeout` seconds (storage is not keeping up)."""


class _Front:
    """Per-stream queue state shared between a MetadataWriter and its engine."""

    def __init__(self, stream: str, gateway: str, max_batch: int, queue_limit: int) -> None:
        self.stream = stream
        self.schema = schema(stream)
        self.converter = Converter(stream, gateway)
        self.allowed = allowed_columns(stream)
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.cond = threading.Condition(threading.Lock())
        self.rows: list[Mapping[str, Any]] = []
        self.batches: list[pa.RecordBatch] = []
        self.queued = 0
        self.refused: list[str] = []

    def take(self) -> tuple[list[Mapping[str, Any]], list[pa.RecordBatch]]:
        with self.cond:
            rows, batches = self.rows, self.batches
            self.rows, self.batches, self.queued = [], [], 0
            self.cond.notify_all()
        return rows, batches

    def convert(self, rows: list[Mapping[str, Any]]) -> pa.RecordBatch | None:
        """Rows -> one RecordBatch; rows that do not convert are refused and reported."""
        batch, refused = self.converter.rows(rows)
        if refused:
            for message in refused:
                log.warning("%s", message)
            with self.cond:
                self.refused = (self.refused + refused)[-20:]
        return batch

    def take_refused(self) -> list[str]:
        with self.cond:
            refused, self.refused = self.refused, []
        return refused


class _Engine:
    """Journal, sequence numbers and threads of one writer name in this process."""

    _registry: ClassVar[dict[tuple[str, str], _Engine]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def acquire(
        cls, paths: DataPaths, writer: str, gateway: str, front: _Front, **opts: Any
    ) -> _Engine:
        """The process's engine for `writer` (made on first use), with `front` registered."""
        key = (str(Path(paths.root).resolve()), writer)
        with cls._registry_lock:
            engine = cls._registry.get(key)
            if engine is None:
                engine = cls(paths, writer, gateway, **opts)
                cls._registry[key] = engine
            elif engine.gateway != gateway:
                raise StoreError(
                    f"metadata writer {writer!r} is already open for gateway "
                    f"{engine.gateway!r}, not {gateway!r}"
                )
            with engine.io_lock:
                if front.stream in engine.fronts:
                    raise StoreError(
                        f"metadata stream {front.stream!r} is already open for "
                        f"writer {writer!r} in this process"
                    )
                engine.fronts[front.stream] = front
            return engine

    def __init__(
        self,
        paths: DataPaths,
        writer: str,
        gateway: str,
        *,
        flush_interval: float,
        parquet_interval: float,
        parquet_rows: int,
        compact_delay: float,
        compact_interval: float,
        clock: Clock,
    ) -> None:
        self.key = (str(Path(paths.root).resolve()), writer)
        self.root = Path(paths.metadata)
        self.jdir = ensure_dir(paths.journal)
        ensure_dir(self.root)
        self.writer, self.gateway, self.clock = writer, gateway, clock
        self.flush_interval, self.parquet_interval = flush_interval, parquet_interval
        self.parquet_rows, self.compact_delay = parquet_rows, compact_delay
        self.compact_interval = compact_interval
        self.commit = self.jdir / f"{writer}.commit"
        self.compact_commit = self.jdir / f"{writer}.compact"
        self.fronts: dict[str, _Front] = {}
        self.io_lock = threading.RLock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.unjournaled: list[tuple[str, list[pa.RecordBatch]]] = []
        self.hour_files: dict[tuple[str, int], int] = {}
        self.pending: dict[str, list[pa.RecordBatch]] = {}
        self.pending_rows = 0
        self.pending_since: float | None = None
        self.journal = Journal(self.jdir / f"{writer}.journal")
        try:
            self._recover()
        except BaseException:
            self.journal.close()
            raise
        self.threads = [
            threading.Thread(target=self._run, name=f"lbm-meta-{writer}", daemon=True),
            threading.Thread(target=self._run_compactor, name=f"lbm-compact-{writer}", daemon=True),
        ]
        for t in self.threads:
            t.start()

    # -- start-up ---------------------------------------------------------------------------
    def _recover(self) -> None:
        cp.recover_compaction(self.compact_commit, self.root)
        done = cp.recover_round(self.root, self.commit)
        self.seq, self.hour_files = cp.scan_own(self.root, self.gateway, self.writer)
        frames = self.journal.read()
        if self.journal.discarded:
            log.warning(
                "journal %s: ignored %d bytes of torn tail",
                self.journal.path,
                self.journal.discarded,
            )
        replay = 0
        for frame in frames:
            if done and done[0] == self.journal.generation and frame.seq <= done[1]:
                continue
            stream, batches = decode_batches(frame.payload)
            batches = [b for batch in batches for b in conform(stream, batch).to_batches()]
            self.pending.setdefault(stream, []).extend(batches)
            replay += sum(b.num_rows for b in batches)
        if replay:
            log.info("journal %s: replaying %d rows into Parquet", self.journal.path, replay)
        self.pending_rows = replay
        self.publish()  # also empties the journal and removes a recovered commit record

    # -- draining and publishing ------------------------------------------------------------
    def _drain(self) -> list[tuple[str, list[pa.RecordBatch]]]:
        """Take every front's queued rows, converted to batches (called with io_lock held)."""
        staged = []
        for stream, front in list(self.fronts.items()):
            rows, batches = front.take()
            converted = front.convert(rows)
            if converted is not None:
                batches = [converted, *batches]
            batches = [b for b in batches if b.num_rows]
            if batches:
                staged.append((stream, batches))
        return staged

    def _journal(self, staged: list[tuple[str, list[pa.RecordBatch]]]) -> None:
        if not staged:
            return
        payloads = [encode_batches(st, bs, schema(st)) for st, bs in staged]
        try:
            self.journal.append(payloads)
        except StoreError:
            self.unjournaled = staged + self.unjournaled
            raise
        self._add_pending(staged)

    def _add_pending(self, staged: list[tuple[str, list[pa.RecordBatch]]]) -> None:
        for stream, batches in staged:
            self.pending.setdefault(stream, []).extend(batches)
            self.pending_rows += sum(b.num_rows for b in batches)
        if staged and self.pending_since is None:
            self.pending_since = time.monotonic()

    def flush(self) -> None:
        """Journal every queued row of every stream and fsync (caller's thread)."""
        with self.io_lock:
            if self.failure:
                raise StoreError(self.failure)
            # Rows that failed to journal before go first; no new rows are taken until they
            # are in, so a full disk turns into backpressure on the appenders.
            leftover, self.unjournaled = self.unjournaled, []
            self._journal(leftover)
            self._journal(self._drain())

    def publish(self, *, drain: bool = False) -> None:
        """Publish every journaled row as Parquet (one round), then empty the journal.

        With `drain`, queued rows go straight into the round too, skipping the journal: they
        are durable when the round is, which is no later than a flush would make them.
        """
        with self.io_lock:
            if self.failure:
                raise StoreError(self.failure)
            fresh: list[tuple[str, list[pa.RecordBatch]]] = []
            if drain:
                fresh, self.unjournaled = self.unjournaled, []
                fresh += self._drain()
            try:
                self._round(fresh)
            except BaseException:
                if not self.failure:  # nothing published: fresh rows must reach the journal
                    self.unjournaled = fresh + self.unjournaled
                raise

    def _round(self, fresh: list[tuple[str, list[pa.RecordBatch]]]) -> None:
        """One publication round of the journaled rows plus `fresh` ones."""
        streams: dict[str, list[pa.RecordBatch]] = {k: list(v) for k, v in self.pending.items()}
        for stream, batches in fresh:
            streams.setdefault(stream, []).extend(batches)
        files: list[tuple[Path, pa.Table]] = []
        touched: list[tuple[str, int]] = []
        for stream, batches in streams.items():
            if not batches:
                continue
            sch = schema(stream)
            meta = dict(sch.metadata or {})
            meta.update(
                {b"lbm.gateway": self.gateway.encode(), b"lbm.writer": self.writer.encode()}
            )
            table = pa.Table.from_batches(batches, schema=sch).replace_schema_metadata(meta)
            for hour, part in cp.split_by_hour(table):
                self.seq += 1
                name = cp.FileName(self.gateway, self.writer, self.seq).name
                files.append((cp.hour_dir(self.root, stream, hour) / name, part))
                touched.append((stream, hour))
        try:
            if files:  # a failure before the commit record leaves nothing behind: retry
                cp.write_round(
                    self.root,
                    self.commit,
                    files,
                    self.journal.generation,
                    self.journal.next_seq - 1,
                )
            self.journal.reset()
            cp.finish_round(self.commit)
        except (cp.RoundIncomplete, OSError, StoreError) as exc:
            if not self.commit.exists():
                raise  # nothing was published: the journal still has every row, retry later
            # Published but not yet forgotten by the journal: only start-up recovery can
            # tell the two apart, so stop accepting rows rather than risk duplicates.
            self.failure = f"metadata writer {self.writer!r} stopped: {exc}; restart it to recover"
            raise StoreError(self.failure) from None
        self.pending.clear()
        self.pending_rows = 0
        self.pending_since = None
        for stream, hour in touched:
            self.hour_files[(stream, hour)] = self.hour_files.get((stream, hour), 0) + 1

    def _next_seq(self) -> int:
        with self.io_lock:
            self.seq += 1
            return self.seq

    def _queued(self) -> int:
        return sum(f.queued for f in list(self.fronts.values()))

    def _publish_due(self, extra: int = 0) -> bool:
        rows = self.pending_rows + extra
        if not rows:
            return False
        if rows >= self.parquet_rows:
            return True
        since = self.pending_since
        return since is not None and time.monotonic() - since >= self.parquet_interval

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.flush_interval)
            self.wake.clear()
            try:
                if self._publish_due(extra=self._queued()):
                    self.publish(drain=True)
                else:
                    self.flush()
            except Exception as exc:  # keep serving; flush() reports it to callers
                log.error("metadata writer %r: %s", self.writer, exc)
                self.stopping.wait(min(self.flush_interval, 1.0))

    # -- compaction -------------------------------------------------------------------------
    def compact_closed_hours(self) -> int:
        """Compact this writer's files of every hour that closed `compact_delay` ago."""
        closed_before = int(self.clock.now().timestamp() - self.compact_delay) // 3600
        with self.io_lock:
            due = sorted(k for k, n in self.hour_files.items() if n >= 2 and k[1] < closed_before)
            for key in due:
                del self.hour_files[key]
        done = 0
        for stream, hour in due:
            try:
                if not cp.compact_hour(
                    self.root,
                    self.compact_commit,
                    stream,
                    hour,
                    self.gateway,
                    self.writer,
                    self._next_seq,
                ):
                    continue
            except BaseException:
                with self.io_lock:
                    self.hour_files[(stream, hour)] = self.hour_files.get((stream, hour), 0) + 2
                raise
            with self.io_lock:
                self.hour_files[(stream, hour)] = self.hour_files.get((stream, hour), 0) + 1
            done += 1
        return done

    def _run_compactor(self) -> None:
        while not self.stopping.wait(self.compact_interval):
            try:
                self.compact_closed_hours()
            except Exception as exc:
                log.error("metadata writer %r: compaction failed: %s", self.writer, exc)

    # -- shutdown ---------------------------------------------------------------------------
    def release(self, stream: str) -> None:
        """Publish everything queued; stop threads and unlock once the last stream closes."""
        with _Engine._registry_lock:
            try:
                self.publish(drain=True)
            finally:
                with self.io_lock:
                    self.fronts.pop(stream, None)
                last = not self.fronts
                if last:
                    if self.unjournaled and not self.failure:  # publishing failed: journal them
                        with contextlib.suppress(StoreError):
                            self.flush()
                    _Engine._registry.pop(self.key, None)
                    self.stopping.set()
                    self.wake.set()
                    for t in self.threads:
                        t.join()
                    with self.io_lock:
                        self.journal.close()


class MetadataWriter:
    """Appends rows of one metadata stream; see the module docstring for the guarantees."""

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
    ) -> None:
        schema(stream)
        self.stream = stream
        self.writer = cp.check_id("writer", writer)
        self.gateway = cp.check_id("gateway", gateway)
        self.block_timeout = block_timeout
        self._front = _Front(stream, gateway, max_batch, queue_limit)
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
            clock=clock or Clock(),
        )

    # -- appending --------------------------------------------------------------------------
    def append(self, row: Mapping[str, Any]) -> None:
        """Queue one row (a mapping of column -> value; missing columns are null).

        The mapping is taken over: do not change it after appending.
        """
        front = self._front
        if not front.allowed.issuperset(row):
            check_columns(self.stream, row)
        if row.get("ts") is None or row.get("uid") is None:
            missing = "ts" if row.get("ts") is None else "uid"
            raise SchemaError(f"column {missing!r} is required in metadata stream {self.stream!r}")
        if "gateway" in row and row["gateway"] != self.gateway:
            raise SchemaError(f"column 'gateway' is set by the writer ({self.gateway!r})")
        with front.cond:
            self._wait_for_room(1)
            front.rows.append(row)
            front.queued += 1
            if front.queued >= front.max_batch:
                self._engine.wake.set()

    def append_batch(self, data: pa.RecordBatch | pa.Table | Mapping[str, Any]) -> None:
        """Queue many rows at once: a RecordBatch, Table or dict of column -> list/array.

        Columns are checked and cast to the schema once per batch; missing columns are null.
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

        Raises SchemaError if rows of this stream were refused at conversion since the last call.
        """
        self._engine.flush()
        refused = self._front.take_refused()
        if refused:
            raise SchemaError("; ".join(refused))

    async def aflush(self) -> None:
        """`flush()` for asyncio code, run in a worker thread."""
        await asyncio.to_thread(self.flush)

    def publish(self) -> None:
        """Write everything accepted so far to Parquet now (normally periodic)."""
        self._engine.publish(drain=True)

    def compact(self) -> int:
        """Compact this writer's files of closed hours now; returns the hours compacted."""
        return self._engine.compact_closed_hours()

    def close(self) -> None:
        """Flush, publish to Parquet, and stop the threads once no stream of the writer is open."""
        if self._closed:
            return
        with self._front.cond:
            self._closed = True
        self._engine.release(self.stream)
        refused = self._front.take_refused()
        if refused:
            raise SchemaError("; ".join(refused))

    def __enter__(self) -> MetadataWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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

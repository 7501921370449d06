"""The engine behind every `MetadataWriter` of one writer name in a process.

One engine per (data directory, writer name) holds the locked journal, the Parquet sequence
numbers and three threads: the flush thread (drains the streams' queues into the journal every
`flush_interval`, and publishes journaled rows as Parquet every `parquet_interval` or
`parquet_rows`), the compaction thread (merges this writer's files of closed hours), and the gap
reporter (`store.metadata.gaps`). Streams of the same writer name (capture's `flow` and `dns`)
share it; the registry makes it on first use and stops it when the last stream closes.

With an `s3://` metadata root, rounds publish into a local outbox and an `Uploader` thread
(`store.metadata.upload`) copies it to the object store; there is no compaction there.

`io_lock` serialises journal writes, publication rounds and the sequence counter; it is held
across I/O, so nothing on an appending path may take it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from store import StoreError
from store import compact as cp
from store.clock import Clock
from store.fsutil import ensure_dir
from store.journal import Journal, encode_batches
from store.metadata.front import _Front
from store.metadata.gaps import GapReporter
from store.metadata.replay import recover
from store.metadata.upload import StoreBacklog, Uploader, open_remote, read_seq, reserve_seq
from store.objectstore import is_object_uri
from store.paths import DataPaths
from store.schemas import schema

log = logging.getLogger("lbm.store.metadata")

Staged = list[tuple[str, list[pa.RecordBatch]]]


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
        gap_quiet: float,
        gap_report_interval: float,
        clock: Clock,
    ) -> None:
        self.key = (str(Path(paths.root).resolve()), writer)
        self.jdir = ensure_dir(paths.journal)
        settings = paths.store_settings
        self.uploader: Uploader | None = None
        self.seq_file = self.jdir / f"{writer}.seq"
        self.io_lock = threading.RLock()
        if is_object_uri(settings.metadata_root):  # rounds go to the outbox, then the store
            self.root = ensure_dir(self.jdir / f"{writer}.outbox")
            self.uploader = Uploader(
                self.root, open_remote(settings), writer, settings, self.io_lock
            )
            parquet_interval = float(settings.metadata_publish_seconds)
        else:
            self.root = ensure_dir(Path(settings.metadata_root))  # DATA/metadata unless configured
        self.writer, self.gateway, self.clock = writer, gateway, clock
        self.flush_interval, self.parquet_interval = flush_interval, parquet_interval
        self.parquet_rows, self.compact_delay = parquet_rows, compact_delay
        self.compact_interval = compact_interval
        self.commit = self.jdir / f"{writer}.commit"
        self.compact_commit = self.jdir / f"{writer}.compact"
        self.fronts: dict[str, _Front] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.unjournaled: Staged = []
        self.pending_since: float | None = None
        self.journal = Journal(self.jdir / f"{writer}.journal")
        try:
            found = recover(
                self.root, self.commit, self.compact_commit, self.journal, gateway, writer
            )
            self.seq, self.hour_files = found.seq, found.hour_files
            if self.uploader is not None:  # uploaded files left the outbox: keep SEQ apart
                # never below the clock: a journal/ restored from an older backup holds an old
                # SEQ, and the numbers after it are uploaded already (a silent overwrite)
                self.seq = max(self.seq, int(time.time()), read_seq(self.seq_file) or 0)
            self.pending, self.pending_rows = found.pending, found.rows
            self.publish()  # also empties the journal and removes a recovered commit record
        except BaseException:
            self.journal.close()
            raise
        self.reporter = GapReporter(
            lambda: list(self.fronts.values()),
            writer,
            gateway,
            quiet=gap_quiet,
            interval=gap_report_interval,
        )
        self.threads = [threading.Thread(target=self._run, name=f"lbm-meta-{writer}", daemon=True)]
        if self.uploader is None:  # never compact on the object store
            self.threads.append(
                threading.Thread(
                    target=self._run_compactor, name=f"lbm-compact-{writer}", daemon=True
                )
            )
        for t in self.threads:
            t.start()
        if self.uploader is not None:
            self.uploader.start()
        self.reporter.start()

    # -- draining and publishing ------------------------------------------------------------
    def _drain(self) -> Staged:
        """Take every front's queued rows, converted to batches (called with io_lock held)."""
        staged = []
        for stream, front in list(self.fronts.items()):
            rows, batches = front.take()
            batches = [b for b in [*front.convert(rows), *batches] if b.num_rows]
            if batches:
                staged.append((stream, batches))
        return staged

    def _journal(self, staged: Staged) -> None:
        if not staged:
            return
        payloads = [encode_batches(st, bs, schema(st)) for st, bs in staged]
        try:
            self.journal.append(payloads)
        except StoreError:
            self.unjournaled = staged + self.unjournaled
            raise
        self._add_pending(staged)

    def _add_pending(self, staged: Staged) -> None:
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
            fresh: Staged = []
            if drain:
                fresh, self.unjournaled = self.unjournaled, []
                fresh += self._drain()
            try:
                self._round(fresh)
            except BaseException:
                if not self.failure:  # nothing published: fresh rows must reach the journal
                    self.unjournaled = fresh + self.unjournaled
                raise

    def _round(self, fresh: Staged) -> None:
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
            for hour, part in cp.round_parts(table):
                self.seq += 1
                name = cp.FileName(self.gateway, self.writer, self.seq).name
                files.append((cp.hour_dir(self.root, stream, hour) / name, part))
                touched.append((stream, hour))
        if files and self.uploader is not None:
            reserve_seq(self.seq_file, self.seq)  # before any file carries the new numbers
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
        if self.uploader is not None:
            if files:
                self.uploader.rescan()
            return
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
            if self.uploader is not None and self.uploader.over_limit:
                # upload backlog full: rows stay queued (append_nowait refuses once the queue
                # is full) or in the journal until the store takes the outbox again
                self.stopping.wait(self.flush_interval)
                continue
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
        if self.uploader is not None:
            return 0
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

    # -- object store ------------------------------------------------------------------------
    def store_backlog(self) -> StoreBacklog:
        return self.uploader.backlog() if self.uploader is not None else StoreBacklog(0, 0, 0)

    def wait_uploaded(self, timeout: float) -> bool:
        return self.uploader is None or self.uploader.wait_empty(timeout)

    # -- shutdown ---------------------------------------------------------------------------
    def release(self, stream: str) -> None:
        """Publish everything queued; stop threads and unlock once the last stream closes."""
        with _Engine._registry_lock:
            try:
                self.publish(drain=True)
            finally:
                front = self.fronts.get(stream)
                if front is not None:
                    self.reporter.close_front(front)
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
                    if self.uploader is not None:
                        self.uploader.stop()
                    self.reporter.stop()
                    with self.io_lock:
                        self.journal.close()

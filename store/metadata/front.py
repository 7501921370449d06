"""The per-stream queue between a `MetadataWriter` and its engine, and its overload episodes.

A `_Front` holds one stream's rows and batches waiting for the journal, the conversion refusals
to report at the next `flush()`, and the rows `append_nowait` refused under overload (a *gap
episode*, reported by `store.metadata.gaps`).

Locking: `cond` guards every list and counter here. It is held only to append to a list, swap
lists or update counters, never across I/O, conversion or a wait by the engine, so a caller of
`append_nowait` never waits for the flush thread. (`append` waits on `cond` when the queue is
full, which releases it.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from store.clock import format_utc
from store.convert import Converter
from store.schemas import allowed_columns, schema

log = logging.getLogger("lbm.store.metadata")

#: Why `append_nowait` refused rows: the queue was full (storage not keeping up), or the
#: engine stopped after a failure it cannot recover from without a restart.
REASON_QUEUE_FULL = "queue_full"
REASON_WRITER_STOPPED = "writer_stopped"
#: the queue is full because the object store's upload backlog reached its bound
#: (`[store] upload_backlog_mb`): the store has been unreachable for a while
REASON_STORE_BACKLOG = "store_backlog"
CONVERT_CHUNK = 2048  # rows per call into pyarrow's converter (bounds how long it holds the GIL)


@dataclass
class GapEpisode:
    """Refusals of one stream since the first one, until the engine makes room again."""

    reason: str
    start: datetime  # first refusal of the episode
    since: datetime  # first refusal not yet reported
    last: datetime  # latest refusal
    last_mono: float
    reported_mono: float  # when the episode opened or was last reported
    rows: int = 0  # refused since `since`
    total: int = 0  # refused in the whole episode


@dataclass(frozen=True)
class GapReport:
    """What one METADATA_GAP audit entry says: counts and times, never row content."""

    stream: str
    writer: str
    gateway: str
    reason: str
    rows: int  # rows refused between `first` and `last`
    first: datetime
    last: datetime
    episode_start: datetime
    episode_rows: int  # rows refused in the episode so far
    ended: bool  # False: an interim report of an episode still going on

    def fields(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "writer": self.writer,
            "gateway": self.gateway,
            "reason": self.reason,
            "rows": self.rows,
            "first": format_utc(self.first),
            "last": format_utc(self.last),
            "episode_start": format_utc(self.episode_start),
            "episode_rows": self.episode_rows,
            "ended": self.ended,
        }


GapSink = Callable[[GapReport], None]


class _Front:
    """Per-stream queue state shared between a MetadataWriter and its engine."""

    def __init__(
        self,
        stream: str,
        gateway: str,
        max_batch: int,
        queue_limit: int,
        sinks: tuple[GapSink, ...] = (),
    ) -> None:
        self.stream = stream
        self.schema = schema(stream)
        self.converter = Converter(stream, gateway)
        self.allowed = allowed_columns(stream)
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.sinks = sinks
        self.cond = threading.Condition(threading.Lock())
        self.rows: list[Mapping[str, Any]] = []
        self.batches: list[pa.RecordBatch] = []
        self.queued = 0
        self.refused: list[str] = []
        self.gaps = 0  # rows refused by append_nowait over the writer's life
        self.episode: GapEpisode | None = None
        self.last_take = time.monotonic()  # when the engine last emptied the queue

    def take(self) -> tuple[list[Mapping[str, Any]], list[pa.RecordBatch]]:
        with self.cond:
            rows, batches = self.rows, self.batches
            self.rows, self.batches, self.queued = [], [], 0
            self.last_take = time.monotonic()
            self.cond.notify_all()
        return rows, batches

    def convert(self, rows: list[Mapping[str, Any]]) -> list[pa.RecordBatch]:
        """Rows -> RecordBatches; rows that do not convert are refused and reported.

        Converted `CONVERT_CHUNK` rows per call: pyarrow holds the GIL for a whole call, and
        65,536 rows at once would stall every other thread (an appending event loop) for a
        quarter of a second; between chunks the interpreter lets them run.
        """
        batches: list[pa.RecordBatch] = []
        refused: list[str] = []
        for start in range(0, len(rows), CONVERT_CHUNK):
            batch, bad = self.converter.rows(rows[start : start + CONVERT_CHUNK])
            if batch is not None:
                batches.append(batch)
            refused += bad
        if refused:
            for message in refused:
                log.warning("%s", message)
            with self.cond:
                self.refused = (self.refused + refused)[-20:]
        return batches

    def take_refused(self) -> list[str]:
        with self.cond:
            refused, self.refused = self.refused, []
        return refused

    def refuse(self, reason: str, now: datetime) -> bool:
        """Count one row refused under overload (call with `cond` held).

        Returns True if it opened a new episode (the caller then wakes the gap reporter).
        """
        self.gaps += 1
        mono = time.monotonic()
        episode = self.episode
        opened = episode is None
        if episode is None:
            episode = self.episode = GapEpisode(reason, now, now, now, mono, mono)
        elif episode.rows == 0:  # first refusal since the last interim report
            episode.since = now
        episode.rows += 1
        episode.total += 1
        episode.last, episode.last_mono = now, mono
        return opened

    def gap_report(
        self, writer: str, gateway: str, *, quiet: float, interval: float, final: bool
    ) -> GapReport | None:
        """The report due now for this stream's episode, if any (the gap reporter calls it).

        An episode ends once the engine has emptied the queue after its last refusal and no
        row was refused for `quiet` seconds (so a queue that fills again between flushes
        under sustained overload stays one episode); while it lasts, an interim report is
        due every `interval` seconds. `final` ends it now (the writer is closing).
        """
        now = time.monotonic()
        with self.cond:
            ep = self.episode
            if ep is None:
                return None
            ended = final or (self.last_take > ep.last_mono and now - ep.last_mono >= quiet)
            interim = ep.rows > 0 and now - ep.reported_mono >= interval
            if not (ended or interim):
                return None
            report = GapReport(
                self.stream,
                writer,
                gateway,
                ep.reason,
                ep.rows,
                ep.since if ep.rows else ep.last,
                ep.last,
                ep.start,
                ep.total,
                ended,
            )
            if ended:
                self.episode = None
            else:
                ep.rows, ep.reported_mono = 0, now
            return report

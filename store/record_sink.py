"""The record API the channels hold: `RecordSink`, and the narrow `RecordTarget` it writes to.

`Archive.open_record(...)` returns a `RecordSink`; the channel calls `sink.write(bytes)` any
number of times and `sink.close() -> record_id` once (or uses it as a context manager, which
closes with `aborted` set when the block raised). The sink knows nothing of archives or
segments: it is handed a `RecordTarget`, the one open record of one segment, whose two methods
are the whole contract between them. The target owns every failure policy (abandoning a
segment that failed, sealing one that is due), so a sink cannot reach past it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from store import ArchiveError

Bytes = bytes | bytearray | memoryview


class RecordTarget(Protocol):
    """Where a `RecordSink` writes: one record in progress in one open segment.

    `write` appends content; `end` finishes the record (`aborted` marks a record whose writer
    failed before its end). Either raises `ArchiveError` on failure, after the target has dealt
    with its segment (abandoned it, sealed as truncated if possible); the record is then over.
    """

    def write(self, data: Bytes) -> None: ...

    def end(self, *, aborted: bool) -> None: ...


class RecordSink:
    """One record being written; `write` any number of times, then `close()` -> record id."""

    def __init__(self, target: RecordTarget, record_id: str) -> None:
        self._target = target
        self.record_id = record_id
        self._done = False

    def write(self, data: Bytes) -> None:
        if self._done:
            raise ArchiveError(f"record {self.record_id}: write after close")
        try:
            self._target.write(data)
        except ArchiveError:
            self._done = True
            raise

    def close(self, *, aborted: bool = False) -> str:
        if self._done:
            raise ArchiveError(f"record {self.record_id}: closed already or failed")
        self._done = True
        self._target.end(aborted=aborted)
        return self.record_id

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.close(aborted=exc is not None)

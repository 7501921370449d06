"""`BodyStream`: the `stream` callable of one archived message body (addons/archiver.py): it
relays every chunk unchanged and coalesces chunks into body records of about `limit` bytes,
written once that much has gathered, when a chunk comes `max_age` seconds after the first
unwritten one (or `flush_if_old` finds it that old), and at the body's end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class FlowArchive(Protocol):
    """What a body stream writes its records through (`archiver._FlowArchive`)."""

    def record(self, kind: str, parts: Sequence[bytes]) -> None: ...


class BodyStream:
    """The `stream` callable of one message body: relays each chunk unchanged and writes
    coalesced body records (see the module docstring)."""

    def __init__(
        self,
        fa: FlowArchive,
        kind: str,
        limit: int,
        max_age: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.fa = fa
        self.kind = kind
        self.limit = limit
        self.max_age = max_age
        self.monotonic = monotonic
        self.parts: list[bytes] = []
        self.size = 0
        self.since = 0.0
        self.seen = 0  # body bytes that went through, in total
        self.done = False

    def __call__(self, data: bytes) -> bytes:
        if data and not self.done:
            if not self.parts:
                self.since = self.monotonic()
            self.parts.append(data)
            self.size += len(data)
            self.seen += len(data)
            if self.size >= self.limit or self.monotonic() - self.since >= self.max_age:
                self.flush()
        return data

    def flush(self) -> None:
        if self.parts:
            parts, self.parts, self.size = self.parts, [], 0
            self.fa.record(self.kind, parts)

    def finish(self) -> None:
        self.flush()
        self.done = True

    def flush_if_old(self, now: float) -> None:
        if self.parts and not self.done and now - self.since >= self.max_age:
            self.flush()

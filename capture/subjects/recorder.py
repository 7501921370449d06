"""Subjects' packets into their authorisations' archives as pcapng records (DECISIONS
"Packets"), readable by tshark once an investigator decrypts them.

`capture.subjects.gate` decides per packet (at the packet's own timestamp) and hands covered packets
here.
Each flow's packets for a reference are gathered in a small buffer and written as one record when
the flow ends, when the buffer reaches `RECORD_MAX_BYTES`, when it is `RECORD_MAX_AGE_S` old
(`sweep()`, called about once a second by live capture), or when the authorisation stops
covering the flow. Writing whole records keeps every concurrent flow of a subject in the same
segment (a record being streamed holds its segment). Buffers are bounded per flow and in total
(`TOTAL_MAX_BYTES`: past it every buffer is written out). The record ids go on the flow's row.
An archive failure is counted and reported to `on_error` (the caller audits a capture gap); it
never stops the capture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from capture.subjects.pcapng import PcapngRecord
from store import ArchiveError
from store.archive import Archive

RECORD_MAX_AGE_S = 5.0
RECORD_MAX_BYTES = 1 << 20
TOTAL_MAX_BYTES = 64 << 20


@dataclass
class _Pending:
    """One record being gathered: its pcapng bytes, first packet's instant, start time."""

    at: datetime
    started: float
    buf: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.pcapng = PcapngRecord(self.buf.extend)


@dataclass
class _Flow:
    principal: str
    pending: dict[str, _Pending] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    record_ids: list[str] = field(default_factory=list)


class SubjectRecorder:
    """Records being gathered for subjects' flows, by flow uid."""

    def __init__(
        self,
        archive: Archive,
        on_error: Callable[[str, str], None] | None = None,
        *,
        max_bytes: int = RECORD_MAX_BYTES,
        max_age_s: float = RECORD_MAX_AGE_S,
        total_bytes: int = TOTAL_MAX_BYTES,
    ) -> None:
        self.archive = archive
        self.on_error = on_error
        self.max_bytes, self.max_age_s, self.total_bytes = max_bytes, max_age_s, total_bytes
        self.flows: dict[str, _Flow] = {}
        self.archived = 0  # packets written (once per packet, whatever the number of refs)
        self.errors = 0
        self.buffered = 0  # bytes held in pending records

    def packet(
        self,
        uid: str,
        principal: str,
        refs: tuple[str, ...],
        at: datetime,
        linktype: int,
        ts_ns: int,
        frame: bytes,
        wire_len: int,
    ) -> None:
        flow = self.flows.setdefault(uid, _Flow(principal))
        if principal != flow.principal:  # the address passed to another subject mid-flow
            for ref in list(flow.pending):
                self._close(flow, ref)
            flow.principal = principal
        for ref in [r for r in flow.pending if r not in refs]:
            self._close(flow, ref)  # that authorisation no longer covers this instant
        for ref in refs:
            self._add(flow, ref, at, linktype, ts_ns, frame, wire_len)
        self.archived += 1
        if self.buffered > self.total_bytes:
            self.sweep(max_age=0.0)

    def not_covered(self, uid: str) -> None:
        """A packet of the flow is covered by no authorisation (cancelled, expired): write its
        records now; what was recorded before stays."""
        flow = self.flows.get(uid)
        if flow is not None:
            for ref in list(flow.pending):
                self._close(flow, ref)

    def sweep(self, max_age: float | None = None) -> None:
        """Write out every record gathered for longer than `max_age` seconds (default: the
        recorder's `max_age_s`)."""
        max_age = self.max_age_s if max_age is None else max_age
        now = time.monotonic()
        for flow in self.flows.values():
            for ref, pending in list(flow.pending.items()):
                if now - pending.started >= max_age:
                    self._close(flow, ref)

    def _add(
        self,
        flow: _Flow,
        ref: str,
        at: datetime,
        linktype: int,
        ts_ns: int,
        frame: bytes,
        wire_len: int,
    ) -> None:
        pending = flow.pending.get(ref)
        if pending is None:
            pending = flow.pending[ref] = _Pending(at, time.monotonic())
            flow.refs.add(ref)
            self.buffered += len(pending.buf)
        before = len(pending.buf)
        pending.pcapng.packet(linktype, ts_ns, frame, wire_len)
        self.buffered += len(pending.buf) - before
        if len(pending.buf) >= self.max_bytes:
            self._close(flow, ref)

    def _close(self, flow: _Flow, ref: str) -> None:
        pending = flow.pending.pop(ref, None)
        if pending is None:
            return
        self.buffered -= len(pending.buf)
        try:
            sink = self.archive.open_record(ref, "packets", flow.principal, pending.at, "pcapng")
            sink.write(bytes(pending.buf))
            flow.record_ids.append(sink.close())
        except ArchiveError as exc:
            self._failed(ref, exc)

    def _failed(self, ref: str, exc: ArchiveError) -> None:
        self.gap(ref, str(exc))

    def gap(self, ref: str, reason: str) -> None:
        """Packets covered by `ref` were lost: counted and reported to `on_error`."""
        self.errors += 1
        if self.on_error is not None:
            self.on_error(ref, reason)

    def end(self, uid: str) -> tuple[list[str], list[str]] | None:
        """The flow ended: close its records; (refs, record ids), or None if not a subject's."""
        flow = self.flows.pop(uid, None)
        if flow is None:
            return None
        for ref in list(flow.pending):
            self._close(flow, ref)
        return sorted(flow.refs), flow.record_ids

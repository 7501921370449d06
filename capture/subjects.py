"""Subjects' packets into their authorisations' archives: one pcapng record per flow per
segment (DECISIONS "Packets"), readable by tshark once an investigator decrypts it.

The pipeline decides per packet (at the packet's own timestamp) and hands covered packets here.
A flow's record for a reference stays open while packets come, is closed when the flow ends or
after `RECORD_MAX_AGE_S` (so its segment can close on time; later packets open a new record),
and its record ids go on the flow's row. An archive failure is counted and reported to
`on_error` (the caller audits a capture gap); it never stops the capture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from capture.pcapng import PcapngRecord
from store import ArchiveError
from store.archive import Archive

RECORD_MAX_AGE_S = 30.0


@dataclass
class _Flow:
    principal: str
    sinks: dict[str, tuple[Any, PcapngRecord, float]] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    record_ids: list[str] = field(default_factory=list)


class SubjectRecorder:
    """Open archive records of subjects' flows, by flow uid."""

    def __init__(
        self, archive: Archive, on_error: Callable[[str, str], None] | None = None
    ) -> None:
        self.archive = archive
        self.on_error = on_error
        self.flows: dict[str, _Flow] = {}
        self.archived = 0  # packets written (once per packet, whatever the number of refs)
        self.errors = 0

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
        for ref in [r for r in flow.sinks if r not in refs]:
            self._close(flow, ref)  # that authorisation no longer covers this instant
        for ref in refs:
            self._write(flow, ref, at, linktype, ts_ns, frame, wire_len)
        self.archived += 1

    def not_covered(self, uid: str) -> None:
        """A packet of the flow is covered by no authorisation (cancelled, expired): close its
        records now; what was recorded before stays."""
        flow = self.flows.get(uid)
        if flow is not None:
            for ref in list(flow.sinks):
                self._close(flow, ref)

    def _write(
        self,
        flow: _Flow,
        ref: str,
        at: datetime,
        linktype: int,
        ts_ns: int,
        frame: bytes,
        wire_len: int,
    ) -> None:
        now = time.monotonic()
        entry = flow.sinks.get(ref)
        try:
            if entry is not None and now - entry[2] > RECORD_MAX_AGE_S:
                self._close(flow, ref)
                entry = None
            if entry is None:
                sink = self.archive.open_record(ref, "packets", flow.principal, at, "pcapng")
                entry = (sink, PcapngRecord(sink.write), now)
                flow.sinks[ref] = entry
                flow.refs.add(ref)
            entry[1].packet(linktype, ts_ns, frame, wire_len)
        except ArchiveError as exc:
            self._failed(ref, exc)
            flow.sinks.pop(ref, None)

    def _close(self, flow: _Flow, ref: str) -> None:
        entry = flow.sinks.pop(ref, None)
        if entry is None:
            return
        try:
            flow.record_ids.append(entry[0].close())
        except ArchiveError as exc:
            self._failed(ref, exc)

    def _failed(self, ref: str, exc: ArchiveError) -> None:
        self.errors += 1
        if self.on_error is not None:
            self.on_error(ref, str(exc))

    def end(self, uid: str) -> tuple[list[str], list[str]] | None:
        """The flow ended: close its records; (refs, record ids), or None if not a subject's."""
        flow = self.flows.pop(uid, None)
        if flow is None:
            return None
        for ref in list(flow.sinks):
            self._close(flow, ref)
        return sorted(flow.refs), flow.record_ids

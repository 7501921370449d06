"""Reporting rows that `append_nowait` refused: one report per overload episode per stream.

A `GapReporter` thread per engine turns the episodes counted by each stream's `_Front` into
`GapReport`s and hands them to the stream's sinks (the writer's audit log, as a METADATA_GAP
entry, and/or an `on_gap` callback). It never runs in the appending thread or event loop, and
never takes the engine's `io_lock`, which the flush thread holds across journal I/O: a stalled
disk stalls the journal, not the report of what the stall cost.

An episode opens at its first refusal and ends once the engine has emptied the queue again and
nothing was refused for `quiet` seconds; one report is made when it ends, plus an interim one
every `interval` seconds while it lasts. A sink that fails is retried at the next poll. The
reports carry counts, the stream, writer and gateway, and times; never row content.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from store.clock import format_utc
from store.metadata.front import GapReport, GapSink, _Front

log = logging.getLogger("lbm.store.metadata")


class GapReporter:
    """The thread that reports gap episodes of one engine's streams."""

    def __init__(
        self,
        fronts: Callable[[], list[_Front]],
        writer: str,
        gateway: str,
        *,
        quiet: float,
        interval: float,
        poll: float = 0.1,
    ) -> None:
        self.fronts, self.writer, self.gateway = fronts, writer, gateway
        self.quiet, self.interval, self.poll = quiet, interval, poll
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._undelivered: list[tuple[GapSink, GapReport]] = []
        self._lock = threading.Lock()  # serialises delivery (thread vs. a closing writer)
        self.thread = threading.Thread(target=self._run, name=f"lbm-gaps-{writer}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End every open episode, report it, and stop the thread."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join()

    def close_front(self, front: _Front) -> None:
        """A stream is closing: report its open episode now (in the closing thread)."""
        self._deliver(front, self._due(front, final=True))

    def _due(self, front: _Front, *, final: bool) -> GapReport | None:
        return front.gap_report(
            self.writer, self.gateway, quiet=self.quiet, interval=self.interval, final=final
        )

    def report_due(self, *, final: bool = False) -> None:
        for front in self.fronts():
            self._deliver(front, self._due(front, final=final))
        if self._undelivered:
            self._deliver(None, None)

    def _deliver(self, front: _Front | None, report: GapReport | None) -> None:
        with self._lock:
            pending, self._undelivered = self._undelivered, []
            if front is not None and report is not None:
                _log(report)
                pending += [(sink, report) for sink in front.sinks]
            for sink, item in pending:
                try:
                    sink(item)
                except Exception as exc:  # e.g. the audit log is unwritable: retry later
                    log.error(
                        "metadata writer %r: cannot record a metadata gap of stream %r (%s); "
                        "will retry",
                        self.writer,
                        item.stream,
                        type(exc).__name__,
                    )
                    self._undelivered.append((sink, item))

    def _busy(self) -> bool:
        return bool(self._undelivered) or any(f.episode is not None for f in self.fronts())

    def _run(self) -> None:
        while True:
            stopping = self.stopping.is_set()
            try:
                self.report_due(final=stopping)
            except Exception as exc:  # never let the reporter die
                log.error("metadata writer %r: gap reporter: %s", self.writer, exc)
            if stopping:
                return
            self.wake.wait(self.poll if self._busy() else None)
            self.wake.clear()


def _log(report: GapReport) -> None:
    log.warning(
        "metadata stream %r (writer %r): %d rows refused (%s) from %s to %s%s",
        report.stream,
        report.writer,
        report.rows,
        report.reason,
        format_utc(report.first),
        format_utc(report.last),
        "" if report.ended else " (overload continues)",
    )

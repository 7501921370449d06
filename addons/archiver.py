"""`Archiver`: a subject's whole web session into the archive of every ref in `FlowState.refs`.

For a flow whose `FlowState.refs` (set by `Decision` at `requestheaders`) is non-empty:

- the request head is one record at `requestheaders`, the response head one at
  `responseheaders` (formats in addons/archive_records.py);
- bodies stream: `request.stream` / `response.stream` are set to a `BodyStream`
  (addons/archive_body.py), a callable that passes every chunk on unchanged and coalesces
  chunks into body records of about
  `record_bytes` (1 MiB): a record is written once that much has gathered, when a chunk
  arrives `record_seconds` (2 s) after the first unwritten one or a timer on the loop finds
  it that old (`flush_idle`, every second), and at the body's end. No body
  is ever held whole in memory: at most one record's worth per direction per flow.
  The end is taken from the `request` / `response` / `error` hooks, never from the `b""`
  end marker (HTTP/2 can deliver it twice);
- trailers, a `websocket-end` record, an `http-error` record when mitmproxy ends the flow;
- each WebSocket message is its own record (`websocket_message`); the flow's message list is
  then cut down to the newest message, so a long session does not pile messages up in memory
  (the newest stays for the addons after us in the same hook, e.g. `Metadata`).

Each item goes to every ref's archive as its own record; the record ids are appended to
`FlowState.record_ids` in order. Records are opened, written and closed within one job, so a
segment is never held between records and concurrent flows share one open segment.

Writes are synchronous on the event loop by default. Each record ends with an index fsync
(store/segment.py): 0.2 ms on an idle disk, but 4-5 ms on the loaded 2-core test machine, where
a profile of 3,000 small subject requests (bench/bench_proxy.py --profile) spent 46 s of 67 s
in `posix.fsync` on the loop, stalling every user's connections meanwhile.

`background=True` moves the writes to one worker thread (addons/archive_worker.py), in order;
`response`, `error` and `websocket_end` then return an awaitable that resolves once the flow's
records are written, so the next addon sees every record id. It is off because it is not
safe with the current chain: while our hook awaits, mitmproxy can run `client_disconnected`
for that client (the client has the whole streamed response already), `Metadata` forgets the
`ConnState`, and its row for the request loses the principal (seen in
tests/web/test_web_archive.py). Turning it on needs `Metadata` to keep what it needs in the
flow (or forget connections only after their last flow); the real cure for the cost is fewer
fsyncs in the store (one per batch of records).

`ConnState`/`FlowState` never reach a record: only the message bytes do, with
`Proxy-Authorization` redacted; `flow.metadata["proxyauth"]` (the plaintext proxy password)
is never read here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mitmproxy import connection, http

from addons import archive_records as rec
from addons.archive_body import BodyStream
from addons.archive_worker import ArchiveWorker
from addons.state import FlowState, conn_state, flow_state
from store import ArchiveError, StoreError
from store.archive import Archive
from store.audit import Action, AuditLog
from store.clock import Clock

log = logging.getLogger("lbm.web.archiver")

RECORD_BYTES = 1 << 20
RECORD_SECONDS = 2.0


def gap_reason(exc: ArchiveError) -> str:
    """A reason code for a capture gap (the store's messages name causes, never content)."""
    text = str(exc)
    for needle, code in (
        ("disk full", "disk_full"),
        ("quota", "disk_quota"),
        ("file size limit", "file_size_limit"),
        ("permission denied", "permission_denied"),
        ("archive is closed", "archive_closed"),
        ("cannot store segment key", "key_store_failed"),
        ("no authorisation key", "no_authorisation_key"),
    ):
        if needle in text:
            return code
    return "write_failed"


@dataclass
class ArchiverCounts:
    """Counts only (status/metrics): no ref, principal or host."""

    records: int = 0
    bytes: int = 0
    gaps: int = 0  # failed record writes (one per ref per failed item)
    gap_flows: int = 0  # flows with at least one gap
    audit_failures: int = 0  # capture_gap entries that could not be written


class _FlowArchive:
    """One subject flow's archiving: writes items as records to each of the flow's refs."""

    def __init__(self, owner: Archiver, flow: http.HTTPFlow, state: FlowState) -> None:
        self.owner = owner
        self.state = state
        self.conn = conn_state(flow.client_conn)
        self.client_id = flow.client_conn.id
        self.principal = self.conn.principal
        # in every record's header: which flow it belongs to (records of concurrent flows
        # interleave in a segment) and the request's scheme (an origin-form head lacks it)
        self.header = {"flow": flow.id, "scheme": flow.request.scheme or "http"}
        # refs the intercepted connection carried at the flow's start: one that leaves
        # ConnState.refs later was cancelled or expired (Decision.on_snapshot narrows it)
        self.conn_refs = frozenset(self.conn.refs)
        self.failed: set[str] = set()  # refs that failed in this flow: no more records to them
        self.request_body: BodyStream | None = None
        self.response_body: BodyStream | None = None
        self.request_done = False
        self.response_done = False

    def refs(self) -> list[str]:
        """The refs this flow still archives to, read at every record: nothing more is written
        to a ref once the proxy has seen its cancellation or expiry, even for a flow in
        flight (up to one record's worth gathered before it is dropped, never written)."""
        ended = self.conn_refs.difference(self.conn.refs) if self.conn_refs else frozenset()
        return [r for r in self.state.refs if r not in self.failed and r not in ended]

    def record(self, kind: str, parts: Sequence[bytes]) -> None:
        """Queue one item; the worker writes it to each ref still live at that moment."""

        def job() -> None:
            for ref in self.refs():
                self.owner.write_record(self, ref, kind, parts)

        self.owner.worker.submit(job, sum(len(p) for p in parts))


class Archiver:
    """mitmproxy addon; see the module docstring."""

    def __init__(
        self,
        archive: Archive,
        audit: AuditLog,
        actor: str,
        clock: Clock,
        *,
        writer: str = "proxy",
        record_bytes: int = RECORD_BYTES,
        record_seconds: float = RECORD_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = False,
    ) -> None:
        self.archive = archive
        self.audit = audit
        self.actor = actor
        self.clock = clock
        self.writer = writer
        self.record_bytes = record_bytes
        self.record_seconds = record_seconds
        self.monotonic = monotonic
        self.counts = ArchiverCounts()
        self._flows: dict[str, _FlowArchive] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.worker = ArchiveWorker(inline=not background)

    # -- writing ---------------------------------------------------------------------------
    def write_record(self, fa: _FlowArchive, ref: str, kind: str, parts: Sequence[bytes]) -> None:
        try:
            sink = self.archive.open_record(
                ref, "web", fa.principal, self.clock.now(), kind, extra=fa.header
            )
            with sink:  # closes the record marked aborted if anything below raises
                for part in parts:
                    sink.write(part)
        except ArchiveError as exc:
            self._gap(fa, ref, kind, gap_reason(exc))
            return
        except Exception as exc:  # a bug of ours must not break the subject's traffic either
            log.error("web archive write raised %s", type(exc).__name__)  # no message: content
            self._gap(fa, ref, kind, "internal_error")
            return
        fa.state.record_ids.append(sink.record_id)
        self.counts.records += 1
        self.counts.bytes += sum(len(p) for p in parts)

    def _gap(self, fa: _FlowArchive, ref: str, kind: str, reason: str) -> None:
        # The choice: an archive failure (disk full, permissions, a lost key) never stops the
        # subject's traffic, which the proxy keeps relaying. Failing closed would let a full
        # disk take the force's web access down and tell the subject they are watched. Instead
        # the gap is on record: FlowState.archive_gap (the metadata row), one audited
        # `capture_gap` per ref per flow (ref, request id, reason code, the item kind; never
        # content), and counts. Nothing more is written to that ref for this flow (a flow's
        # record set is whole up to the gap, never holed); the next flow tries again.
        self.counts.gaps += 1
        if not fa.state.archive_gap:
            self.counts.gap_flows += 1
        fa.state.archive_gap = True
        fa.failed.add(ref)
        log.warning("web archive write failed (%s): traffic continues, gap audited", reason)
        try:
            self.audit.append(
                Action.CAPTURE_GAP,
                self.actor,
                refs=(ref,),
                channel="web",
                writer=self.writer,
                request_id=fa.state.request_id,
                reason=reason,
                item=kind,
            )
        except (StoreError, OSError):
            self.counts.audit_failures += 1
            log.error("web archive gap could not be audited (%s)", reason)

    def _stream(self, fa: _FlowArchive, kind: str) -> BodyStream:
        return BodyStream(fa, kind, self.record_bytes, self.record_seconds, self.monotonic)

    def _maybe_end(self, flow: http.HTTPFlow, fa: _FlowArchive) -> None:
        """Forget the flow once both messages are over (a WebSocket flow at its end)."""
        if fa.request_done and fa.response_done and flow.websocket is None:
            self._flows.pop(flow.id, None)

    # -- mitmproxy hooks -------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = flow_state(flow)
        if state is None or not state.refs:
            return
        fa = _FlowArchive(self, flow, state)
        self._flows[flow.id] = fa
        fa.record(rec.REQUEST_HEAD, [rec.request_head(flow.request)])
        if flow.response is None and not flow.error:  # not answered by an addon before us
            fa.request_body = self._stream(fa, rec.REQUEST_BODY)
            flow.request.stream = fa.request_body

    def request(self, flow: http.HTTPFlow) -> None:
        fa = self._flows.get(flow.id)
        if fa is None or fa.request_done:
            return
        body = fa.request_body
        if body is not None:
            body.finish()
        if (body is None or body.seen == 0) and flow.request.raw_content:
            # not streamed: mitmproxy buffered it (e.g. a response was set before us)
            fa.record(rec.REQUEST_BODY, [flow.request.raw_content])
        if flow.request.trailers:
            fa.record(rec.REQUEST_TRAILERS, [rec.header_block(flow.request.trailers)])
        fa.request_done = True
        self._maybe_end(flow, fa)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fa = self._flows.get(flow.id)
        if fa is None or flow.response is None or fa.response_body is not None:
            return
        fa.record(rec.RESPONSE_HEAD, [rec.response_head(flow.response)])
        fa.response_body = self._stream(fa, rec.RESPONSE_BODY)
        flow.response.stream = fa.response_body

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        fa = self._flows.get(flow.id)
        if fa is None or flow.response is None or fa.response_done:
            return None
        body = fa.response_body
        if body is None:  # answered by an addon: no responseheaders of ours came first
            fa.record(rec.RESPONSE_HEAD, [rec.response_head(flow.response)])
        else:
            body.finish()
        if (body is None or body.seen == 0) and flow.response.raw_content:
            fa.record(rec.RESPONSE_BODY, [flow.response.raw_content])
        if flow.response.trailers:
            fa.record(rec.RESPONSE_TRAILERS, [rec.header_block(flow.response.trailers)])
        fa.response_done = True
        self._maybe_end(flow, fa)
        return self._written()

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        fa = self._flows.get(flow.id)
        if fa is None:
            return None
        for body in (fa.request_body, fa.response_body):
            if body is not None:
                body.finish()  # what streamed before the error is kept
        if flow.error is not None:
            fa.record(rec.HTTP_ERROR, [rec.error_record(flow.error.msg)])
        fa.request_done = fa.response_done = True
        self._flows.pop(flow.id, None)  # a WebSocket that fails ends here too
        return self._written()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if ws is None or not ws.messages:
            return
        fa = self._flows.get(flow.id)
        if fa is not None:
            message = ws.messages[-1]
            fa.record(rec.websocket_kind(message), [message.content])
        # Messages pile up in memory otherwise: keep only the newest, for later addons.
        del ws.messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        fa = self._flows.pop(flow.id, None)
        if fa is None or flow.websocket is None:
            return None
        fa.record(rec.WEBSOCKET_END, [rec.websocket_end_record(flow.websocket)])
        return self._written()

    def _written(self) -> Awaitable[None] | None:
        """What the hook returns: mitmproxy awaits it before the next addon (`Metadata`) sees
        the flow, so the row gets every record id. None when writing inline."""
        return None if self.worker.inline else self.worker.drained()

    def client_disconnected(self, client: connection.Client) -> None:
        """Forget any flow of this client still held (its hooks have all run by now)."""
        stale = [fid for fid, fa in self._flows.items() if fa.client_id == client.id]
        for fid in stale:
            self._flows.pop(fid, None)

    # -- idle bodies -----------------------------------------------------------------------
    def flush_idle(self) -> None:
        """Write every body piece gathered `record_seconds` ago or more (a stream that paused
        after a few bytes is on disk within seconds, not held until its next chunk)."""
        now = self.monotonic()
        for fa in list(self._flows.values()):
            for body in (fa.request_body, fa.response_body):
                if body is not None:
                    body.flush_if_old(now)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.record_seconds / 2)
            self.flush_idle()

    def running(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="lbm archiver flush"
            )

    def done(self) -> None:
        """mitmproxy is stopping: write what is queued, then end the worker thread (the
        daemon closes the archive after this)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        for fa in list(self._flows.values()):
            for body in (fa.request_body, fa.response_body):
                if body is not None and not body.done:
                    body.finish()
        self.worker.stop()

    @property
    def open_flows(self) -> int:
        """Flows with archiving state held (should fall back to 0 when traffic stops)."""
        return len(self._flows)


__all__ = ["RECORD_BYTES", "RECORD_SECONDS", "Archiver", "ArchiverCounts", "gap_reason"]

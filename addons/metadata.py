"""`Metadata`: one `web` row per request, per passed-through connection, per failed connection.

Rows go through `MetadataWriter.append_nowait` only (it never blocks the event loop; a refused
row is counted and audited by the writer as a metadata gap). Request rows are written at
`response`/`error` (WebSocket flows at `websocket_end`); a connection's own row (passed through
unopened, or failed before any request) at `client_disconnected`, where its `ConnState` is
forgotten. Every body is streamed (`request.stream`/`response.stream` set to a counting
callable, wrapping the Archiver's for a subject), so no body is held in memory and only its
size is known here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from addons import logfilter
from addons.rows import address, alpn_text, community_id, error_code, ts
from addons.state import FLOW_KEY, ConnState, FlowState, conn_state, flow_state, forget
from store.clock import Clock

logger = logging.getLogger("lbm.web")

StreamFn = Callable[[bytes], "bytes | Iterable[bytes]"]


class RowSink(Protocol):
    def append_nowait(self, row: Mapping[str, Any]) -> bool: ...


def _counting(inner: object, fs: FlowState, up: bool) -> StreamFn:
    def stream(data: bytes) -> bytes | Iterable[bytes]:
        if up:
            fs.bytes_up += len(data)
        else:
            fs.bytes_down += len(data)
        if callable(inner):
            out: bytes | Iterable[bytes] = inner(data)
            return out
        return data

    return stream


class Metadata:
    """Writes the `web` stream's rows (see the module docstring)."""

    def __init__(self, writer: RowSink, clock: Clock, *, notice_version: str) -> None:
        self.writer = writer
        self.clock = clock
        self.notice_version = notice_version
        self.written = 0
        self.refused = 0

    def _append(self, row: dict[str, Any]) -> None:
        if self.writer.append_nowait(row):
            self.written += 1
        else:
            self.refused += 1  # counted and audited by the writer (metadata_gap)

    def _base(self, state: ConnState, started: float) -> dict[str, Any]:
        return {
            "ts": ts(started),
            "uid": state.uid,
            "principal": state.principal,
            "client_ip": state.client_ip or None,
            "client_port": state.client_port or None,
            "proxy_user": state.proxy_user,
            "notice_version": self.notice_version,
        }

    # -- requests --------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        fs = flow_state(flow)
        if fs is None:
            return
        if flow.response is not None:
            # answered here (421, 407, the notice): mitmproxy cannot stream a request it answers
            # itself; it reads the body and drops it, and the answer is sent whole
            fs.local = True
            return
        flow.request.stream = _counting(flow.request.stream, fs, up=True)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fs = flow_state(flow)
        if fs is not None and flow.response is not None and not fs.local:
            flow.response.stream = _counting(flow.response.stream, fs, up=False)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        fs = flow_state(flow)
        if fs is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if message.from_client:
            fs.bytes_up += len(message.content)
        else:
            fs.bytes_down += len(message.content)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._request_row(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._request_row(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._request_row(flow)

    def _request_row(self, flow: http.HTTPFlow) -> None:
        fs = flow_state(flow)
        if fs is None:  # failed before its head was complete (e.g. an invalid header)
            started = flow.request.timestamp_start or self.clock.now().timestamp()
            fs = FlowState(request_id=uuid.uuid4().hex, started=started)
            flow.metadata[FLOW_KEY] = fs
        if fs.written:
            return
        fs.written = True
        state = conn_state(flow.client_conn)
        state.rows += 1
        row = self._base(state, fs.started)
        req, resp = flow.request, flow.response
        server_ip, server_port = address(flow.server_conn.peername)
        client = flow.client_conn
        kind = fs.error_kind
        if kind is None and flow.error is not None:
            kind = error_code(flow.error.msg)
        if kind is None and fs.archive_gap:
            kind = "archive_gap"
        if fs.local:
            fs.bytes_up = len(req.raw_content or b"")
            fs.bytes_down = len(resp.raw_content or b"") if resp is not None else 0
        end = resp.timestamp_end if resp is not None and resp.timestamp_end else None
        start = req.timestamp_start
        scheme = req.scheme
        if flow.websocket is not None:
            scheme = "wss" if scheme == "https" else "ws"
            if flow.websocket.timestamp_end:
                end = flow.websocket.timestamp_end
        row.update(
            request_id=fs.request_id,
            server_ip=server_ip,
            server_port=server_port,
            scheme=scheme,
            host=req.pretty_host,
            port=req.port,
            method=req.method,
            status=resp.status_code if resp is not None else None,
            http_version=req.http_version,
            bytes_up=fs.bytes_up,
            bytes_down=fs.bytes_down,
            duration=max(0.0, end - start) if end and start else None,
            server_name=client.sni if client.tls else None,
            tls_version=client.tls_version if client.tls else None,
            tls_cipher=client.cipher if client.tls else None,
            alpn=alpn_text(client.alpn) if client.tls else None,
            decision="intercepted" if client.tls else None,
            do_not_decrypt=state.do_not_decrypt or (resp is not None and resp.status_code == 421),
            websocket=flow.websocket is not None,
            error_kind=kind,
            refs=list(fs.refs),
            record_ids=list(fs.record_ids),
            community_id=_cid(state, client),
        )
        self._append(row)

    # -- connections -----------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        state = conn_state(flow.client_conn)
        state.host, state.port = flow.request.host, flow.request.port
        state.method = "CONNECT"

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        state = conn_state(data.client)
        state.server_ip, state.server_port = address(data.server.peername)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        state = conn_state(data.client)
        if state.error_kind is None:
            state.error_kind = error_code(data.server.error) or "upstream_failed"

    def client_disconnected(self, client: connection.Client) -> None:
        state = conn_state(client)
        try:
            logged = logfilter.take_client_event(client.peername)
            if state.decision == "passed" or state.rows == 0:
                self._connection_row(client, state, logged)
        finally:
            forget(client)

    def _connection_row(
        self, client: connection.Client, state: ConnState, logged: str | None
    ) -> None:
        started = state.started or self.clock.now().timestamp()
        row = self._base(state, started)
        passed = state.decision == "passed"
        kind = state.error_kind
        if not passed and kind is None:
            kind = logged or (
                "client_closed"
                if state.decision
                else "bad_request"
                if state.sent_data
                else "no_request"
            )
        if passed and kind is None and logged in ("timeout",):
            kind = logged
        end = client.timestamp_end or None
        duration = max(0.0, end - client.timestamp_start) if end else None
        server_ip, server_port = state.server_ip, state.server_port
        if server_ip is None and state.host:
            server_port = state.port
        row.update(
            request_id=uuid.uuid4().hex,
            server_ip=server_ip,
            server_port=server_port,
            scheme="https" if passed else None,
            host=state.host,
            port=state.port,
            method="CONNECT" if passed else state.method,
            bytes_up=state.bytes_up if passed else None,
            bytes_down=state.bytes_down if passed else None,
            duration=duration,
            server_name=state.server_name,
            decision=state.decision,
            do_not_decrypt=state.do_not_decrypt,
            websocket=False,
            error_kind=kind,
            refs=[],
            record_ids=[],
            community_id=_cid(state, client),
        )
        self._append(row)


def _cid(state: ConnState, client: connection.Client) -> str | None:
    """Community ID of the connection the client opened (to us, or through us transparently)."""
    sock_ip, sock_port = address(client.sockname)
    return community_id(state.client_ip, sock_ip, state.client_port, sock_port)

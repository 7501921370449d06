"""Resource limits for untrusted clients: header size, connections per client, slow headers.

- Request head size (`[web] max_header_bytes`): mitmproxy buffers an HTTP/1 request head without
  bound (its own FIXME in `Http1Server.read_headers`); `install_header_limit` wraps that method
  so a head growing past the limit gets `431 Request Header Fields Too Large` and the
  connection closes. The one place we wrap a mitmproxy internal; pinned to mitmproxy 11.0.x.
- Connections per client IP (`[web] max_connections_per_client`): one more is refused at
  `client_connected` (its row says `too_many_connections`).
- Slow clients (`[web] header_timeout_seconds`): a connection that has not sent its first
  request head (or TLS ClientHello) within the timeout is closed (`error_kind="timeout"`); idle
  connections close after `[web] idle_timeout_seconds` (mitmproxy's inactivity watchdog).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import mitmproxy.proxy.server as mitm_server
from mitmproxy import connection, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import _http1

from addons import cancel, logfilter
from addons.state import conn_state

HEADER_TOO_LARGE = 431
_original_read_headers: Callable[..., Any] | None = None
_limit = [65_536]


def install_header_limit(max_header_bytes: int) -> None:
    """Refuse HTTP/1 request heads longer than `max_header_bytes` (431, then close)."""
    global _original_read_headers
    _limit[0] = max_header_bytes
    if _original_read_headers is not None:
        return
    original = _http1.Http1Server.read_headers
    _original_read_headers = original

    def read_headers(
        self: _http1.Http1Server, event: events.ConnectionEvent
    ) -> layer.CommandGenerator[None]:
        limit = _limit[0]
        if (
            isinstance(event, events.DataReceived)
            and len(self.buf) > limit
            and bytes(self.buf)[: limit + 4].find(b"\r\n\r\n") < 0
        ):
            logfilter.EVENTS.note(self.conn.peername, "header_too_large")
            body = _http1.make_error_response(HEADER_TOO_LARGE, "Request Header Fields Too Large")
            yield commands.SendData(self.conn, body)
            yield commands.CloseConnection(self.conn)
            self.state = self.done
            return
        yield from original(self, event)

    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


def set_idle_timeout(seconds: int) -> None:
    """mitmproxy closes a TCP connection idle this long (read when a connection starts)."""
    mitm_server.TCP_TIMEOUT = seconds


class Limits:
    """Connections per client IP and the first-request deadline."""

    def __init__(self, *, max_connections_per_client: int, header_timeout: float) -> None:
        self.max_per_client = max_connections_per_client
        self.header_timeout = header_timeout
        self._per_ip: Counter[str] = Counter()
        self._counted: set[str] = set()
        self._started: set[str] = set()

    def client_connected(self, client: connection.Client) -> None:
        state = conn_state(client)
        if self._per_ip[state.client_ip] >= self.max_per_client:
            state.error_kind = "too_many_connections"
            client.error = "too many connections from this client"
            return
        self._per_ip[state.client_ip] += 1
        self._counted.add(client.id)
        if self.header_timeout > 0:
            asyncio.get_running_loop().call_later(self.header_timeout, self._deadline, client)

    def _deadline(self, client: connection.Client) -> None:
        if client.id not in self._counted or client.id in self._started:
            return
        if conn_state(client).decision is not None:
            return  # a TLS ClientHello arrived: the connection was decided
        logfilter.EVENTS.note(client.peername, "timeout")
        cancel.close_client(client.id)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._started.add(flow.client_conn.id)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._started.add(flow.client_conn.id)

    def client_disconnected(self, client: connection.Client) -> None:
        if client.id in self._counted:
            self._counted.discard(client.id)
            ip = conn_state(client).client_ip
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
        self._started.discard(client.id)

"""What a subject's web session looks like in the archive: record kinds and head bytes.

Pure functions over mitmproxy's message objects, no I/O (the framing of each record is
store/segment.py's; the whole web layout is documented in docs/archive-format.md, "Web
records"). Heads are HTTP/1-style bytes whatever the wire protocol was:

- request head: `METHOD TARGET VERSION CRLF`, the header fields exactly as received (names and
  values byte for byte, in order, repeated fields kept), `CRLF`. For HTTP/2 and HTTP/3 the
  pseudo-headers become the request line in absolute form:
  `:method :scheme://:authority:path HTTP/2.0` (`:path` alone for an authority-less request).
  The value of `Proxy-Authorization` is replaced by `[redacted]` (the subject's proxy password
  is not evidence).
- response head: `VERSION STATUS REASON CRLF` (HTTP/2 has no reason phrase: `HTTP/2.0 200 `;
  an empty HTTP/1 reason is the standard phrase, as mitmproxy sends it), header fields, `CRLF`.
- trailers: header fields, `CRLF`.
"""

from __future__ import annotations

import json

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.websocket import WebSocketData, WebSocketMessage

REQUEST_HEAD = "http-request-head"
REQUEST_BODY = "http-request-body"
REQUEST_TRAILERS = "http-request-trailers"
RESPONSE_HEAD = "http-response-head"
RESPONSE_BODY = "http-response-body"
RESPONSE_TRAILERS = "http-response-trailers"
HTTP_ERROR = "http-error"
WEBSOCKET_END = "websocket-end"

REDACTED = b"[redacted]"
_REDACT = frozenset({b"proxy-authorization"})


def websocket_kind(message: WebSocketMessage) -> str:
    """`websocket-client-text`, `websocket-server-binary`, ...: direction and frame type."""
    side = "client" if message.from_client else "server"
    return f"websocket-{side}-{'text' if message.is_text else 'binary'}"


def header_block(headers: http.Headers) -> bytes:
    """`Name: value CRLF` per field as received, then the empty line; Proxy-Authorization
    redacted."""
    out = bytearray()
    for name, value in headers.fields:
        out += name + b": " + (REDACTED if name.lower() in _REDACT else value) + b"\r\n"
    out += b"\r\n"
    return bytes(out)


def request_head(request: http.Request) -> bytes:
    d = request.data
    if request.is_http2 or request.is_http3:
        target = d.path
        if d.authority and d.method != b"CONNECT":
            target = (d.scheme or b"https") + b"://" + d.authority + d.path
        elif d.method == b"CONNECT":
            target = d.authority
    elif d.method == b"CONNECT":
        target = d.authority
    elif d.authority:  # absolute-form as sent (plain HTTP through some proxy modes)
        target = d.scheme + b"://" + d.authority + d.path
    else:
        target = d.path
    line = d.method + b" " + target + b" " + d.http_version + b"\r\n"
    return line + header_block(request.headers)


def response_head(response: http.Response) -> bytes:
    d = response.data
    reason = d.reason
    if not reason and not (response.is_http2 or response.is_http3):
        # mitmproxy makes one up for HTTP/1 clients (proxy/layers/http/_http1.py): archive
        # the status line the client received
        reason = status_codes.RESPONSES.get(d.status_code, "").encode()
    line = d.http_version + b" " + str(d.status_code).encode() + b" " + reason + b"\r\n"
    return line + header_block(response.headers)


def error_record(message: str) -> bytes:
    """An `http-error` record: why mitmproxy ended the flow (its own message), as JSON."""
    return json.dumps({"error": message}, sort_keys=True).encode() + b"\n"


def websocket_end_record(ws: WebSocketData) -> bytes:
    """A `websocket-end` record: the close code, reason and side, as JSON."""
    fields = {
        "close_code": ws.close_code,
        "close_reason": ws.close_reason,
        "closed_by_client": ws.closed_by_client,
    }
    return json.dumps(fields, sort_keys=True).encode() + b"\n"

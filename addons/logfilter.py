"""Keep traffic bytes out of every log: mitmproxy's own records are reduced to fixed texts.

mitmproxy logs raw request bytes (`Client closed connection before completing request headers:
b'GET /path?...'`, invalid header lines with `Proxy-Authorization`, `Cannot parse ClientHello:
<hex>`), and error texts can quote what a client sent. So no record from mitmproxy (or the
protocol libraries under it) is ever shown as it was: `PrivacyFilter` replaces its message with
a fixed description chosen from what it says (`describe`), and drops arguments, tracebacks and
stack information. Only our own `lbm.*` messages, written without content, pass unchanged.

`mitmproxy.proxy.server` records also tell which client connection went wrong (the `client`
extra): `ClientEvents` keeps the first code per client address so the connection's metadata row
can carry it as `error_kind` (`take_client_event`), bounded in size.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from typing import Any, TextIO

# loggers whose records may quote traffic
GUARDED_PREFIXES = ("mitmproxy", "h2", "hpack", "h11", "wsproto", "asyncio", "hyperframe", "urwid")

# (lower-case substring, error code, text shown). First match wins; the text is fixed.
_KNOWN: tuple[tuple[str, str, str], ...] = (
    ("before completing request headers", "incomplete_request", "client closed mid-headers"),
    ("closing connection due to inactivity", "timeout", "idle connection closed"),
    ("cannot parse clienthello", "bad_tls", "unreadable TLS ClientHello"),
    ("client tls handshake failed", "client_tls_failed", "client TLS handshake failed"),
    ("server tls handshake failed", "upstream_tls_failed", "server TLS handshake failed"),
    ("request header fields too large", "header_too_large", "request headers too large"),
    ("invalid http", "bad_request", "invalid HTTP request"),
    ("bad http request", "bad_request", "invalid HTTP request"),
    ("invalid header", "bad_request", "invalid HTTP request"),
    ("bad request", "bad_request", "invalid HTTP request"),
    ("protocol error", "bad_request", "HTTP protocol error"),
    ("error establishing server connection", "upstream_failed", "upstream connection failed"),
    ("proxy listening at", "", "proxy listening"),
    ("connection handler has crashed", "internal_error", "a connection handler crashed"),
    ("addon error", "internal_error", "an addon failed"),
    ("unhandled", "internal_error", "an unhandled error"),
)
_PREFIX_CODES: tuple[tuple[str, str], ...] = ()


def describe(message: str) -> tuple[str, str]:
    """(error code or "", fixed text) for a mitmproxy log message; never echoes the message."""
    low = message.lower()
    for needle, code, text in _KNOWN:
        if needle in low:
            return code, text
    if ": " in message and message.split(": ", 1)[0].count(":") <= 8:
        # "<client address>: <parser error>" (mitmproxy's bad request line/header report)
        head = message.split(": ", 1)[0]
        if head.replace(".", "").replace(":", "").replace("[", "").replace("]", "").isalnum():
            return "bad_request", "invalid HTTP request"
    return "", "message withheld (it may quote traffic)"


def guarded(name: str) -> bool:
    return name.split(".", 1)[0] in GUARDED_PREFIXES


class ClientEvents:
    """First error code seen in the logs per client address (bounded)."""

    def __init__(self, max_entries: int = 65_536) -> None:
        self.max_entries = max_entries
        self._codes: OrderedDict[tuple[str, int], str] = OrderedDict()

    def note(self, peer: Any, code: str) -> None:
        key = _key(peer)
        if key is None or not code or key in self._codes:
            return  # the first code wins: a timeout, then the close it causes, is a timeout
        self._codes[key] = code
        while len(self._codes) > self.max_entries:
            self._codes.popitem(last=False)

    def take(self, peer: Any) -> str | None:
        key = _key(peer)
        return None if key is None else self._codes.pop(key, None)


def _key(peer: Any) -> tuple[str, int] | None:
    try:
        return str(peer[0]), int(peer[1])
    except (TypeError, ValueError, IndexError):
        return None


EVENTS = ClientEvents()


def take_client_event(peer: Any) -> str | None:
    """The error code the logs reported for the client at `peer`, once."""
    return EVENTS.take(peer)


class PrivacyFilter(logging.Filter):
    """Rewrites guarded records in place to a fixed text; notes client error codes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_lbm_clean", False) or not guarded(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: show nothing of it
            message = ""
        code, text = describe(message)
        client = getattr(record, "client", None)
        if code and client is not None:
            EVENTS.note(client, code)
        record.msg = f"{text} [{code}]" if code else text
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record._lbm_clean = True
        return True


def install(stream: TextIO | None = None, level: int = logging.WARNING) -> logging.Handler:
    """Route every log record through `PrivacyFilter` to `stream` (stderr, i.e. the journal).

    mitmproxy's server logger stays at INFO so the filter can classify client errors; only
    records at `level` or above are printed, and those from guarded loggers only as fixed text.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setLevel(level)
    handler.addFilter(PrivacyFilter())
    handler.setFormatter(logging.Formatter("lbm proxy: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    server_logger = logging.getLogger("mitmproxy.proxy.server")
    server_logger.addFilter(PrivacyFilter())  # classify every record, INFO included
    return handler


def guard_handlers() -> None:
    """Add the filter to every handler on the root logger (mitmproxy adds its own)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, PrivacyFilter) for f in handler.filters):
            handler.addFilter(PrivacyFilter())

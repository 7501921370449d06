"""Building `web` metadata rows: pure functions, no mitmproxy objects kept, no content.

A row holds names, addresses, sizes, times, decisions and ids. Never the path, query, fragment,
any header value other than Host, cookies or bodies: the functions here take only those fields,
so nothing else can reach a row by accident. Error texts from mitmproxy or the OS are mapped to
short codes (`error_code`) and never written themselves (they can quote request bytes).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from datetime import UTC, datetime
from typing import Any

# error texts (lower case substrings) -> error_kind codes, first match wins
_ERROR_CODES: tuple[tuple[str, str], ...] = (
    ("killed", "killed"),
    ("certificate verify failed", "upstream_tls_failed"),
    ("certificate", "upstream_tls_failed"),
    ("tls", "upstream_tls_failed"),
    ("ssl", "upstream_tls_failed"),
    ("name or service not known", "dns_failed"),
    ("temporary failure in name resolution", "dns_failed"),
    ("no address associated", "dns_failed"),
    ("getaddrinfo", "dns_failed"),
    ("nodename nor servname", "dns_failed"),
    ("connection refused", "upstream_refused"),
    ("errno 111", "upstream_refused"),
    ("network is unreachable", "upstream_unreachable"),
    ("no route to host", "upstream_unreachable"),
    ("timed out", "upstream_timeout"),
    ("timeout", "upstream_timeout"),
    ("client disconnected", "client_closed"),
    ("server disconnected", "upstream_closed"),
    ("peer closed", "upstream_closed"),
    ("connection reset", "connection_reset"),
    ("protocol error", "protocol_error"),
    ("invalid", "bad_request"),
    ("malformed", "bad_request"),
    ("bad request", "bad_request"),
)


def error_code(text: str | None) -> str | None:
    """A short code for an error text (never the text itself)."""
    if not text:
        return None
    low = text.lower()
    for needle, code in _ERROR_CODES:
        if needle in low:
            return code
    return "error"


def community_id(
    src_ip: str | None, dst_ip: str | None, sport: int | None, dport: int | None
) -> str | None:
    """Community ID v1 of a TCP 5-tuple (seed 0), or None when an end is unknown."""
    if not src_ip or not dst_ip or sport is None or dport is None:
        return None
    try:
        s = ipaddress.ip_address(src_ip)
        d = ipaddress.ip_address(dst_ip)
    except ValueError:
        return None
    if s.version != d.version:
        s4 = getattr(s, "ipv4_mapped", None)
        d4 = getattr(d, "ipv4_mapped", None)
        s, d = s4 or s, d4 or d
        if s.version != d.version:
            return None
    sb, db = s.packed, d.packed
    if sb > db or (sb == db and sport > dport):
        sb, db, sport, dport = db, sb, dport, sport
    data = struct.pack("!H", 0) + sb + db + struct.pack("!BBHH", 6, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def _addr(peer: Any) -> tuple[str | None, int | None]:
    if not peer:
        return None, None
    host = str(peer[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(peer[1])


def address(peer: Any) -> tuple[str | None, int | None]:
    """(ip, port) of a mitmproxy peername/sockname tuple, IPv4-mapped IPv6 shown as IPv4."""
    return _addr(peer)


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def alpn_text(alpn: bytes | None) -> str | None:
    if not alpn:
        return None
    return alpn.decode("ascii", "replace")

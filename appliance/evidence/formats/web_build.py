"""Archived web heads back into mitmproxy objects (the inverse of addons/archive_records.py).

Heads are HTTP/1-style bytes whatever the wire protocol was (docs/archive-format.md, "Web
records"): `METHOD TARGET VERSION CRLF` + `Name: value CRLF`... + `CRLF` for a request, where the
target is absolute form (`https://host/path`, HTTP/2 and HTTP/3, or plain HTTP sent through an
explicit proxy), authority form (`CONNECT`) or origin form (`/path`, with the scheme taken from
the record header's `scheme` field and the host from the `Host` field); `VERSION STATUS REASON
CRLF` + fields for a response. A head cut off part way is parsed as far as it goes.
"""

from __future__ import annotations

from mitmproxy import http

DEFAULT_PORTS = {b"http": 80, b"https": 443}


def parse_fields(block: bytes) -> http.Headers:
    """`Name: value CRLF`... (an empty line ends it) into Headers, bytes, order and repeats
    kept."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        if not line:
            break
        name, sep, value = line.partition(b": ")
        if not sep:  # a field written some other way: `Name:value`
            name, _, value = line.partition(b":")
        fields.append((name, value))
    return http.Headers(fields)


def _split_head(head: bytes) -> tuple[list[bytes], bytes]:
    line, _, rest = head.partition(b"\r\n")
    return line.split(b" ", 2), rest


def _host_port(authority: bytes, scheme: bytes) -> tuple[str, int]:
    host, port = authority, DEFAULT_PORTS.get(scheme, 443)
    if authority.startswith(b"["):  # [v6]:port
        end = authority.find(b"]")
        host = authority[1:end] if end > 0 else authority
        if authority[end + 1 : end + 2] == b":" and authority[end + 2 :].isdigit():
            port = int(authority[end + 2 :])
    elif authority.count(b":") == 1:
        name, _, digits = authority.partition(b":")
        if digits.isdigit():
            host, port = name, int(digits)
    return host.decode("ascii", "replace"), port


def build_request(head: bytes, scheme_hint: str, ts: float) -> http.Request:
    parts, rest = _split_head(head)
    method = parts[0] if parts else b""
    target = parts[1] if len(parts) > 1 else b"/"
    version = parts[2] if len(parts) > 2 else b"HTTP/1.1"
    headers = parse_fields(rest)
    scheme = scheme_hint.encode("ascii", "replace") or b"http"
    authority = b""
    if method == b"CONNECT":
        authority, path = target, b""
    elif b"://" in target and not target.startswith(b"/"):
        scheme, _, after = target.partition(b"://")
        slash = after.find(b"/")
        authority, path = (after, b"/") if slash < 0 else (after[:slash], after[slash:])
    else:
        path = target
    host_field = authority or headers.get("host", "").encode("ascii", "replace")
    host, port = _host_port(host_field, scheme)
    return http.Request(
        host, port, method, scheme, authority, path, version, headers, b"", None, ts, None
    )


def build_response(head: bytes, ts: float) -> http.Response:
    parts, rest = _split_head(head)
    version = parts[0] if parts else b"HTTP/1.1"
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    reason = parts[2] if len(parts) > 2 else b""
    return http.Response(version, status, reason, parse_fields(rest), b"", None, ts, None)

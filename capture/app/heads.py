"""Readers for the heads AppMeta keeps: TLS ClientHello server name, ServerHello version,
HTTP request Host. A few bounded field reads each, never raising on odd input; nothing of
the URL path, other headers or certificates is read.
"""

from __future__ import annotations

import struct

HTTP_METHODS = frozenset(
    {
        b"GET",
        b"POST",
        b"HEAD",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"PATCH",
        b"CONNECT",
        b"TRACE",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"SEARCH",
    }
)
TLS_VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv10",
    0x0302: "TLSv11",
    0x0303: "TLSv12",
    0x0304: "TLSv13",
}


def tls_version_name(version: int) -> str:
    return TLS_VERSIONS.get(version, f"0x{version:04x}")


def norm_host(value: bytes | None) -> str | None:
    """A Host header value without its port (as Zeek's http.log); None if absent or empty."""
    if value is None:
        return None
    host = value.strip().decode("ascii", "replace")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.split(":", 1)[0] or None


def http_host(head: bytes) -> str | None:
    """Host header of an HTTP request head, without a port (as Zeek's http.log)."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else host
            return host.split(":", 1)[0] or None
    return None


def _handshake(data: bytes, want: int) -> bytes | None:
    """The body of the first handshake message of type `want` in TLS records `data`.
    None: more data needed; b"": not that message."""
    hs = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        ctype, _ver, ln = struct.unpack("!BHH", data[pos : pos + 5])
        if ctype != 0x16:
            return b""
        hs += data[pos + 5 : pos + 5 + ln]
        if pos + 5 + ln > len(data):
            break
        pos += 5 + ln
        if len(hs) >= 4:
            htype = hs[0]
            hlen = int.from_bytes(hs[1:4], "big")
            if htype != want:
                return b""
            if len(hs) >= 4 + hlen:
                return bytes(hs[4 : 4 + hlen])
    if len(hs) >= 1 and hs[0] != want:
        return b""
    return None


def _extensions(body: bytes, pos: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if pos + 2 > len(body):
        return out
    end = min(len(body), pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0])
    pos += 2
    while pos + 4 <= end:
        et, el = struct.unpack("!HH", body[pos : pos + 4])
        out.setdefault(et, body[pos + 4 : pos + 4 + el])
        pos += 4 + el
    return out


def parse_client_hello(data: bytes) -> str | None:
    """SNI of a ClientHello in `data` ('' if none); None if the message is incomplete."""
    body = _handshake(data, 1)
    if body is None:
        return None
    try:
        pos = 2 + 32
        pos += 1 + body[pos]  # session id
        pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]  # cipher suites
        pos += 1 + body[pos]  # compression
        sni = _extensions(body, pos).get(0)
        if not sni or len(sni) < 5:
            return ""
        nlen = struct.unpack("!H", sni[3:5])[0]
        return sni[5 : 5 + nlen].decode("ascii", "replace").lower() if sni[2] == 0 else ""
    except (IndexError, struct.error):
        return ""


def parse_server_hello(data: bytes) -> str | None:
    """Negotiated TLS version of a ServerHello ('' if unknown); None if incomplete."""
    body = _handshake(data, 2)
    if body is None:
        return None
    try:
        version = struct.unpack("!H", body[:2])[0]
        pos = 2 + 32
        pos += 1 + body[pos]
        pos += 2 + 1  # cipher suite, compression
        sv = _extensions(body, pos).get(43)
        if sv and len(sv) >= 2:
            version = struct.unpack("!H", sv[:2])[0]
        return TLS_VERSIONS.get(version, f"0x{version:04x}")
    except (IndexError, struct.error):
        return ""

"""The metadata streams' Parquet schemas, declared once: `web`, `email`, `flow`, `dns`.

Every stream starts with the same join keys (`ts`, `uid`, `gateway`, `principal`, `client_ip`,
`client_port`, `server_ip`, `server_port`) and carries `refs`, `record_ids` and `community_id`.
Each field has a one-line description in its field metadata (`b"description"`); each schema has
its stream name and `SCHEMA_VERSION` in its schema metadata, which every Parquet file keeps.

No content columns, by construction: `content_like()` is the denylist the schema test runs over
every column and that the writer enforces on every row, so a column such as `url`, `path`,
`subject` or `user_agent` cannot be added here or smuggled in by a caller.
The DNS query name is `qname` (Zeek calls it `query`, a word the denylist keeps for URLs).
"""

from __future__ import annotations

import re

import pyarrow as pa

from store import SchemaError

SCHEMA_VERSION = "1"
STREAMS = ("web", "email", "flow", "dns")

# Name fragments that mean content (UK law: everything of a URL beyond scheme, host and port,
# subjects, bodies, attachments, header values other than host, credentials). Matched as a
# substring of the lower-cased column name.
CONTENT_SUBSTRINGS = (
    "path",
    "query",
    "url",
    "subject",
    "body",
    "attachment",
    "filename",
    "file_name",
    "header",
    "cookie",
    "payload",
    "content",
    "referer",
    "referrer",
    "user_agent",
    "useragent",
    "password",
    "passwd",
    "secret",
    "credential",
    "mime",
    "snippet",
    "message_text",
    "text",
    "raw",
    "data",
    "bytes_sample",
    "fragment",
    "param",
    "form",
    "html",
    "json",
)
# Short fragments matched only as whole `_`-separated tokens ("uri" would match "security").
CONTENT_TOKENS = frozenset({"uri", "qs", "args", "arg", "msg", "note", "title", "blob", "dump"})

_TS = pa.timestamp("us", tz="UTC")
_STRS = pa.list_(pa.string())


def _f(name: str, typ: pa.DataType, description: str, *, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={b"description": description.encode()})


def _join_keys() -> list[pa.Field]:
    return [
        _f(
            "ts",
            _TS,
            "UTC time of the event (web: request start; email: outcome event; "
            "flow and dns: first packet)",
            nullable=False,
        ),
        _f(
            "uid",
            pa.string(),
            "this stream's own id of the connection, message or flow",
            nullable=False,
        ),
        _f("gateway", pa.string(), "id of the gateway that wrote the row", nullable=False),
        _f("principal", pa.string(), "staff identifier the traffic resolved to; null if nobody"),
        _f("client_ip", pa.string(), "IP address of the side that opened the connection"),
        _f("client_port", pa.uint16(), "port of the side that opened the connection"),
        _f("server_ip", pa.string(), "IP address of the side that accepted the connection"),
        _f("server_port", pa.uint16(), "port of the side that accepted the connection"),
    ]


def _tail() -> list[pa.Field]:
    return [
        _f(
            "refs",
            _STRS,
            "authorisation references whose content recording covers this row "
            "(empty for non-subjects)",
        ),
        _f("record_ids", _STRS, "archive record ids (REF/SEGMENT/N) holding this row's content"),
        _f(
            "community_id",
            pa.string(),
            "Community ID v1 of the 5-tuple (shared with Zeek, Suricata, Arkime)",
        ),
    ]


_WEB = [
    _f("request_id", pa.string(), "this row's own id (one request, or one passed connection)"),
    _f("proxy_user", pa.string(), "proxy user name as authenticated (kept when unresolved)"),
    _f("notice_version", pa.string(), "version of the acceptable-use notice in force"),
    _f(
        "scheme",
        pa.string(),
        "URL scheme (http, https, ws, wss); the URL keeps nothing else but host and port",
    ),
    _f("host", pa.string(), "host name requested (Host/authority or CONNECT target)"),
    _f("port", pa.uint16(), "port requested"),
    _f("method", pa.string(), "HTTP method (CONNECT for passed-through tunnels)"),
    _f("status", pa.uint16(), "HTTP status code of the response; null if none"),
    _f("http_version", pa.string(), "HTTP version (HTTP/1.1, HTTP/2.0, HTTP/3)"),
    _f("bytes_up", pa.int64(), "bytes sent by the client (request, or tunnel upstream)"),
    _f("bytes_down", pa.int64(), "bytes received by the client (response, or tunnel downstream)"),
    _f("duration", pa.float64(), "seconds from request start to response end"),
    _f("server_name", pa.string(), "TLS SNI sent by the client"),
    _f("tls_version", pa.string(), "TLS version negotiated with the client"),
    _f("tls_cipher", pa.string(), "TLS cipher suite negotiated with the client"),
    _f("alpn", pa.string(), "ALPN protocol negotiated"),
    _f("decision", pa.string(), "intercepted (decrypted for a subject) or passed (not opened)"),
    _f("do_not_decrypt", pa.bool_(), "the server is on the do-not-decrypt list"),
    _f("websocket", pa.bool_(), "the request was upgraded to a WebSocket"),
    _f(
        "error_kind",
        pa.string(),
        "short error code (e.g. upstream_timeout, tls_failed), never an error text",
    ),
]

_EMAIL = [
    _f("outcome", pa.string(), "event: queued, delivered, deferred or bounced"),
    _f("direction", pa.string(), "outbound (internal sender) or inbound"),
    _f("mail_from", pa.string(), "envelope sender (MAIL FROM), as given"),
    _f("rcpt_to", pa.string(), "envelope recipient (RCPT TO) this row is about"),
    _f("size", pa.int64(), "message size in bytes as received (DATA payload)"),
    _f(
        "message_id_sha256",
        pa.string(),
        "SHA-256 hex of the Message-ID header value, for joining; never the value itself",
    ),
    _f("helo", pa.string(), "name the client gave in HELO/EHLO"),
    _f("auth_user", pa.string(), "SMTP AUTH user name, if the client authenticated"),
    _f("tls_version", pa.string(), "TLS version of the session (null if plain)"),
    _f("upstream", pa.string(), "next hop the message was relayed to"),
    _f("smtp_code", pa.uint16(), "SMTP reply code of the event (e.g. 250, 451, 550)"),
    _f("smtp_status", pa.string(), "enhanced status code of the event (e.g. 2.0.0, 4.4.1)"),
    _f("attempt", pa.uint16(), "delivery attempt number (0 for queued)"),
    _f("is_dsn", pa.bool_(), "the message is a delivery status notification made by the gateway"),
    _f("notice_version", pa.string(), "version of the acceptable-use notice in the banner"),
]

_FLOW = [
    _f("proto", pa.string(), "transport protocol (tcp, udp, icmp, ...)"),
    _f("service", pa.string(), "application protocol detected (e.g. http, ssl, dns)"),
    _f("duration", pa.float64(), "seconds from first to last packet"),
    _f("orig_bytes", pa.int64(), "payload bytes sent by the originator (Zeek orig_bytes)"),
    _f("resp_bytes", pa.int64(), "payload bytes sent by the responder (Zeek resp_bytes)"),
    _f("conn_state", pa.string(), "Zeek connection state (S0, SF, REJ, ...)"),
    _f("local_orig", pa.bool_(), "the originator is in the internal networks"),
    _f("local_resp", pa.bool_(), "the responder is in the internal networks"),
    _f("missed_bytes", pa.int64(), "bytes missed in content gaps"),
    _f("history", pa.string(), "Zeek connection history letters"),
    _f("orig_pkts", pa.int64(), "packets sent by the originator"),
    _f("orig_ip_bytes", pa.int64(), "IP-level bytes sent by the originator"),
    _f("resp_pkts", pa.int64(), "packets sent by the responder"),
    _f("resp_ip_bytes", pa.int64(), "IP-level bytes sent by the responder"),
    _f("tunnel_parents", _STRS, "uids of the encapsulating tunnels (VXLAN, Geneve, GRE)"),
    _f("ip_proto", pa.uint8(), "IP protocol number"),
    _f("vlan", pa.uint16(), "outer 802.1Q VLAN id"),
    _f("inner_vlan", pa.uint16(), "inner 802.1Q VLAN id (QinQ)"),
    _f("interface", pa.string(), "capture interface (or capture file) the flow was seen on"),
    _f("server_name", pa.string(), "TLS SNI of the flow"),
    _f("http_host", pa.string(), "HTTP Host of the flow's first request (plain HTTP)"),
    _f("http_method", pa.string(), "HTTP method of the flow's first request (plain HTTP)"),
    _f("tls_version", pa.string(), "TLS version of the flow"),
]

_DNS = [
    _f("proto", pa.string(), "transport protocol (udp, tcp)"),
    _f("trans_id", pa.uint16(), "DNS transaction id"),
    _f("rtt", pa.float64(), "seconds from query to answer"),
    _f("qname", pa.string(), "domain name queried (Zeek: query)"),
    _f("qclass", pa.uint16(), "query class number"),
    _f("qclass_name", pa.string(), "query class name"),
    _f("qtype", pa.uint16(), "query type number"),
    _f("qtype_name", pa.string(), "query type name (A, AAAA, MX, ...)"),
    _f("rcode", pa.uint16(), "response code number"),
    _f("rcode_name", pa.string(), "response code name (NOERROR, NXDOMAIN, ...)"),
    _f("aa", pa.bool_(), "authoritative answer flag"),
    _f("tc", pa.bool_(), "truncation flag"),
    _f("rd", pa.bool_(), "recursion desired flag"),
    _f("ra", pa.bool_(), "recursion available flag"),
    _f("z", pa.uint8(), "reserved Z bits"),
    _f("opcode", pa.uint8(), "DNS opcode number"),
    _f("opcode_name", pa.string(), "DNS opcode name"),
    _f("answers", _STRS, "resource data of the answers (names and addresses)"),
    _f("ttls", pa.list_(pa.float64()), "TTLs of the answers, seconds"),
    _f("rejected", pa.bool_(), "the server rejected the query"),
    _f("interface", pa.string(), "capture interface (or capture file) the query was seen on"),
]


def _schema(stream: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(
        [*_join_keys(), *fields, *_tail()],
        metadata={b"lbm.stream": stream.encode(), b"lbm.schema_version": SCHEMA_VERSION.encode()},
    )


SCHEMAS: dict[str, pa.Schema] = {
    "web": _schema("web", _WEB),
    "email": _schema("email", _EMAIL),
    "flow": _schema("flow", _FLOW),
    "dns": _schema("dns", _DNS),
}

JOIN_KEYS = tuple(f.name for f in _join_keys())
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")


def schema(stream: str) -> pa.Schema:
    """The schema of `stream`; SchemaError names the stream if there is no such stream."""
    try:
        return SCHEMAS[stream]
    except KeyError:
        raise SchemaError(
            f"unknown metadata stream {stream!r} (streams: {', '.join(STREAMS)})"
        ) from None


def columns(stream: str) -> list[str]:
    """The column names of `stream`, in schema order."""
    return list(schema(stream).names)


def all_columns() -> dict[str, list[str]]:
    """Every stream's column names."""
    return {name: columns(name) for name in STREAMS}


def describe(stream: str) -> dict[str, str]:
    """Column name -> one-line description, for docs and `lbm` help."""
    meta = (f.metadata or {} for f in schema(stream))
    return {
        f.name: m.get(b"description", b"").decode()
        for f, m in zip(schema(stream), meta, strict=True)
    }


def content_like(name: str) -> bool:
    """True if a column name looks like content (URL path/query, subject, body, header...)."""
    low = name.lower()
    if any(fragment in low for fragment in CONTENT_SUBSTRINGS):
        return True
    return any(token in CONTENT_TOKENS for token in _TOKEN_SPLIT.split(low))


def check_columns(stream: str, names: object) -> None:
    """Raise SchemaError naming the first content-like or unknown column of `names`.

    Never includes a value in the message, only column and stream names.
    """
    allowed = _ALLOWED[stream] if stream in _ALLOWED else frozenset(schema(stream).names)
    bad = sorted(str(n) for n in names if n not in allowed)  # type: ignore[attr-defined]
    if not bad:
        return
    content = [n for n in bad if content_like(n)]
    if content:
        raise SchemaError(
            f"column {content[0]!r} is content-like and is never stored in metadata "
            f"stream {stream!r}"
        )
    raise SchemaError(
        f"unknown column {bad[0]!r} for metadata stream {stream!r}"
        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    )


_ALLOWED: dict[str, frozenset[str]] = {k: frozenset(v.names) for k, v in SCHEMAS.items()}


def allowed_columns(stream: str) -> frozenset[str]:
    """The set of column names of `stream` (the writer's fast membership check)."""
    schema(stream)
    return _ALLOWED[stream]


REQUIRED_COLUMNS = ("ts", "uid")

# Columns whose values are (nearly) all different from row to row: Parquet files store them
# without a dictionary. A dictionary there is built, found too large and abandoned: on a 2M-packet
# replay's 52k flows it made writing 28% slower and the files 14% larger (docs/startup.md).
# The encoding is Parquet's own (PLAIN): every reader reads it; the rows do not change.
PLAIN_COLUMNS = frozenset(
    {
        "ts",
        "uid",
        "request_id",
        "community_id",
        "client_port",
        "duration",
        "rtt",
        "trans_id",
        "orig_bytes",
        "resp_bytes",
        "orig_ip_bytes",
        "resp_ip_bytes",
        "bytes_up",
        "bytes_down",
        "size",
    }
)


def dictionary_columns(sch: pa.Schema) -> list[str]:
    """The columns of `sch` that Parquet files store with a dictionary (`use_dictionary`)."""
    return [name for name in sch.names if name not in PLAIN_COLUMNS]

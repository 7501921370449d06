"""The metadata schemas: no content columns, described fields, shared join keys."""

from __future__ import annotations

import pyarrow as pa
import pytest

from store import SchemaError
from store.schemas import (
    JOIN_KEYS,
    SCHEMA_VERSION,
    STREAMS,
    all_columns,
    check_columns,
    columns,
    content_like,
    describe,
    schema,
)


def test_every_column_of_every_schema_is_not_content_like() -> None:
    listing = all_columns()
    assert set(listing) == {"web", "email", "flow", "dns"}
    offenders = [(s, c) for s, cols in listing.items() for c in cols if content_like(c)]
    assert offenders == []


@pytest.mark.parametrize(
    "name",
    [
        "url",
        "request_url",
        "path",
        "url_path",
        "query",
        "query_string",
        "subject",
        "mail_subject",
        "body",
        "response_body",
        "attachment_name",
        "filename",
        "header_x",
        "headers",
        "cookie",
        "set_cookie",
        "payload",
        "content_type",
        "referer",
        "user_agent",
        "request_uri",
        "uri",
        "qs",
        "password",
        "raw_message",
        "Subject",
        "URL",
    ],
)
def test_content_like_names_are_caught(name: str) -> None:
    assert content_like(name)


@pytest.mark.parametrize(
    "name",
    [
        "host",
        "security_level",
        "status",
        "server_name",
        "qname",
        "rcpt_to",
        "message_id_sha256",
        "http_host",
    ],
)
def test_ordinary_metadata_names_pass(name: str) -> None:
    assert not content_like(name)


@pytest.mark.parametrize("stream", STREAMS)
def test_schema_shape(stream: str) -> None:
    sch = schema(stream)
    assert (
        tuple(sch.names[: len(JOIN_KEYS)])
        == JOIN_KEYS
        == (
            "ts",
            "uid",
            "gateway",
            "principal",
            "client_ip",
            "client_port",
            "server_ip",
            "server_port",
        )
    )
    assert sch.field("ts").type == pa.timestamp("us", tz="UTC")
    assert not sch.field("ts").nullable and not sch.field("uid").nullable
    assert sch.field("principal").nullable
    assert sch.field("refs").type == pa.list_(pa.string())
    assert sch.field("record_ids").type == pa.list_(pa.string())
    assert sch.field("community_id").type == pa.string()
    assert sch.metadata[b"lbm.schema_version"] == SCHEMA_VERSION.encode()
    assert sch.metadata[b"lbm.stream"] == stream.encode()
    descriptions = describe(stream)
    assert list(descriptions) == columns(stream)
    empty = [name for name, text in descriptions.items() if not text.strip()]
    assert empty == []
    assert len(set(sch.names)) == len(sch.names)


def test_stream_specific_columns() -> None:
    web = set(columns("web"))
    assert {
        "request_id",
        "proxy_user",
        "notice_version",
        "scheme",
        "host",
        "port",
        "method",
        "status",
        "bytes_up",
        "bytes_down",
        "decision",
        "tls_version",
    } <= web
    email = set(columns("email"))
    assert {"outcome", "direction", "mail_from", "rcpt_to", "size"} <= email
    assert not any("subject" in c for c in email)
    flow = set(columns("flow"))
    assert {
        "proto",
        "service",
        "duration",
        "orig_bytes",
        "resp_bytes",
        "conn_state",
        "missed_bytes",
        "history",
        "orig_pkts",
        "orig_ip_bytes",
        "resp_pkts",
        "resp_ip_bytes",
        "server_name",
        "http_host",
        "tls_version",
    } <= flow
    dns = set(columns("dns"))
    assert {
        "qname",
        "qtype",
        "qtype_name",
        "rcode",
        "rcode_name",
        "answers",
        "ttls",
        "trans_id",
        "proto",
    } <= dns


def test_check_columns_names_column_and_stream() -> None:
    with pytest.raises(SchemaError, match=r"'subject'.*content-like.*'email'"):
        check_columns("email", ["ts", "subject"])
    with pytest.raises(SchemaError, match=r"unknown column 'colour'.*'web'"):
        check_columns("web", ["ts", "colour"])
    check_columns("dns", ["ts", "qname", "answers"])


def test_unknown_stream() -> None:
    with pytest.raises(SchemaError, match="unknown metadata stream 'smtp'"):
        schema("smtp")

"""The `Archiver` addon driven hook by hook with mitmproxy's test flows (`mitmproxy.test.tflow`),
writing into a real `Archive` of a data dir made by `lbm init`, and read back by decrypting with
an investigator identity: exact bytes, record kinds and order, coalescing, redaction, several
refs, WebSocket, errors, non-subjects.

The hooks are called in the order mitmproxy's HTTP layer calls them, and body chunks are fed
through the `stream` callable the addon sets, as the layer does (tests/web/test_web_archive.py
runs the same addon inside the real proxy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import Lbm
from mitmproxy import http
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from addons import archive_records as rec
from addons.archiver import Archiver, gap_reason
from addons.state import FLOW_KEY, FlowState, conn_state
from store import ArchiveError, signing
from store import agefile as age
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths
from store.segment import PlainStream, read_records

PRINCIPAL = "p12345"


class Env:
    """A data dir, an authorisation key per ref (investigator identity kept), an Archive."""

    def __init__(self, data: Path) -> None:
        self.paths = DataPaths(data)
        key = signing.load(self.paths)
        self.audit = AuditLog(self.paths, key, Clock(), witness=False)
        self.archive = Archive(self.paths, key, Clock(), audit=self.audit)
        secret, self.public = age.generate()
        self.identity = age.identity_file_text(secret)

    def ref(self, ref: str) -> str:
        KeyStore(self.paths).create_authorisation_key(ref, [self.public])
        return ref

    def records(self, ref: str) -> list[Any]:
        """Every record of REF, in record-id order, after sealing the open segments."""
        self.archive.close()
        ks = KeyStore(self.paths)
        auth_key = ks.unwrap_authorisation(ref, self.identity)
        out = []
        for seg in sorted((self.paths.archive / ref).glob("[0-9]*.age")):
            seg_key = ks.unwrap_segment(ref, int(seg.name.split(".")[0]), auth_key)
            with seg.open("rb") as fh:
                out += read_records(PlainStream(age.AgeReader(fh, [seg_key]).chunks()))
        return out


@pytest.fixture
def env(lbm: Lbm) -> Env:
    return Env(lbm.data_dir)


def _archiver(env: Env, **kw: Any) -> Archiver:
    return Archiver(env.archive, env.audit, "tester", Clock(), **kw)


def _flow(refs: tuple[str, ...], req: http.Request | None = None) -> http.HTTPFlow:
    flow = tflow.tflow(req=req)
    flow.metadata[FLOW_KEY] = FlowState(request_id="req-1", started=0.0, refs=refs)
    conn_state(flow.client_conn).principal = PRINCIPAL
    return flow


def _request(method: bytes = b"POST", path: bytes = b"/up?q=1", version: str = "HTTP/1.1",
             headers: list[tuple[bytes, bytes]] | None = None) -> http.Request:  # fmt: skip
    fields = headers or [(b"Host", b"www.example.test"), (b"Content-Type", b"x/y")]
    return http.Request(
        "www.example.test", 443, method, b"https", b"", path, version.encode(),
        http.Headers(fields), None, None, 0.0, None,
    )  # fmt: skip


def _response(version: str = "HTTP/1.1", reason: bytes = b"OK") -> http.Response:
    headers = http.Headers([(b"Content-Type", b"application/octet-stream"), (b"X-A", b"1")])
    return http.Response(version.encode(), 200, reason, headers, None, None, 0.0, None)


def _run(
    addon: Archiver,
    flow: http.HTTPFlow,
    req_chunks: list[bytes],
    resp: http.Response,
    resp_chunks: list[bytes],
) -> None:
    """The hook order of mitmproxy's HTTP layer for a streamed request and response."""
    addon.requestheaders(flow)
    stream = flow.request.stream
    for chunk in req_chunks:
        assert callable(stream)
        assert stream(chunk) == chunk  # relayed unchanged
    if callable(stream):
        stream(b"")
    addon.request(flow)
    flow.response = resp
    addon.responseheaders(flow)
    stream = flow.response.stream
    for chunk in resp_chunks:
        assert callable(stream)
        assert stream(chunk) == chunk
    if callable(stream):
        stream(b"")
        stream(b"")  # HTTP/2 can deliver the end marker twice
    addon.response(flow)


def _by_kind(records: list[Any], kind: str) -> bytes:
    return b"".join(r.data for r in records if r.header["kind"] == kind)


def test_http1_session_is_archived_byte_exact_in_order(env: Env) -> None:
    ref = env.ref("ca1-unit-1")
    addon = _archiver(env)
    flow = _flow((ref,), _request())
    up = [bytes([i]) * 70_000 for i in range(5)]
    down = [bytes([200 + i]) * 33_333 for i in range(7)]
    _run(addon, flow, up, _response(), down)

    records = env.records(ref)
    state = flow.metadata[FLOW_KEY]
    assert [r.header["id"] for r in records] == state.record_ids
    assert [r.header["kind"] for r in records] == [
        rec.REQUEST_HEAD, rec.REQUEST_BODY, rec.RESPONSE_HEAD, rec.RESPONSE_BODY,
    ]  # fmt: skip
    assert records[0].data == (
        b"POST /up?q=1 HTTP/1.1\r\nHost: www.example.test\r\nContent-Type: x/y\r\n\r\n"
    )
    assert records[2].data == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-A: 1\r\n\r\n"
    )
    assert _by_kind(records, rec.REQUEST_BODY) == b"".join(up)
    assert _by_kind(records, rec.RESPONSE_BODY) == b"".join(down)
    assert all(r.header["channel"] == "web" and r.header["principal"] == PRINCIPAL for r in records)
    assert all(r.trailer is not None and not r.trailer.get("aborted") for r in records)
    assert not state.archive_gap
    assert addon.open_flows == 0  # nothing held after the flow


def test_bodies_are_coalesced_into_records_of_about_one_mib(env: Env) -> None:
    ref = env.ref("ca1-unit-2")
    addon = _archiver(env)
    flow = _flow((ref,), _request(method=b"GET"))
    chunks = [bytes([i % 251]) * 16_384 for i in range(200)]  # 3.125 MiB in 16 KiB chunks
    _run(addon, flow, [], _response(), chunks)

    bodies = [r for r in env.records(ref) if r.header["kind"] == rec.RESPONSE_BODY]
    assert [len(r.data) for r in bodies] == [1 << 20, 1 << 20, 1 << 20, 128 << 10]
    assert b"".join(r.data for r in bodies) == b"".join(chunks)


def test_a_trickling_body_is_written_every_few_seconds_not_held(env: Env) -> None:
    ref = env.ref("ca1-unit-3")
    now = [100.0]
    addon = _archiver(env, monotonic=lambda: now[0])
    flow = _flow((ref,), _request(method=b"GET"))
    addon.requestheaders(flow)
    addon.request(flow)
    flow.response = _response()
    addon.responseheaders(flow)
    stream = flow.response.stream
    assert callable(stream)
    for i in range(10):  # one small event a second (server-sent events)
        stream(b"data: %d\n\n" % i)
        now[0] += 1.0
    written = len(flow.metadata[FLOW_KEY].record_ids)
    assert written >= 2 + 3  # heads, then a body record at least every 2 s
    addon.response(flow)
    bodies = [r for r in env.records(ref) if r.header["kind"] == rec.RESPONSE_BODY]
    assert b"".join(r.data for r in bodies) == b"".join(b"data: %d\n\n" % i for i in range(10))
    assert max(len(r.data) for r in bodies) <= 3 * len(b"data: 0\n\n")


def test_http2_head_carries_the_pseudo_headers_in_the_request_line(env: Env) -> None:
    ref = env.ref("ca1-unit-4")
    addon = _archiver(env)
    req = _request(method=b"GET", path=b"/a/b?c=d", version="HTTP/2.0",
                   headers=[(b"user-agent", b"t"), (b"accept", b"*/*")])  # fmt: skip
    req.authority = "www.example.test"
    flow = _flow((ref,), req)
    _run(addon, flow, [], _response("HTTP/2.0", b""), [b"hello ", b"h2"])
    records = env.records(ref)
    assert records[0].data == (
        b"GET https://www.example.test/a/b?c=d HTTP/2.0\r\nuser-agent: t\r\naccept: */*\r\n\r\n"
    )
    assert records[1].data.startswith(b"HTTP/2.0 200 \r\ncontent-type") or records[
        1
    ].data.startswith(b"HTTP/2.0 200 \r\nContent-Type")
    # the doubled b"" end marker made no extra record
    assert [r.header["kind"] for r in records] == [
        rec.REQUEST_HEAD, rec.RESPONSE_HEAD, rec.RESPONSE_BODY,
    ]  # fmt: skip
    assert records[2].data == b"hello h2"


def test_proxy_authorization_is_redacted_and_proxyauth_metadata_never_archived(env: Env) -> None:
    ref = env.ref("ca1-unit-5")
    addon = _archiver(env)
    secret = b"Basic c3ViamVjdDpTRUNSRVQtUFJPWFktUEFTUy05MTc="
    req = _request(method=b"GET", path=b"http://www.example.test/x", headers=[
        (b"Host", b"www.example.test"), (b"Proxy-Authorization", secret)])  # fmt: skip
    flow = _flow((ref,), req)
    flow.metadata["proxyauth"] = ("subject", "SECRET-PROXY-PASS-917")
    _run(addon, flow, [], _response(), [b"ok"])
    plain = b"".join(r.data for r in env.records(ref))
    assert b"Proxy-Authorization: [redacted]\r\n" in plain
    assert secret not in plain and b"SECRET-PROXY-PASS-917" not in plain
    assert flow.request.headers["Proxy-Authorization"] == secret.decode()  # relayed as it was


def test_every_ref_gets_every_record(env: Env) -> None:
    a, b = env.ref("ca1-unit-6a"), env.ref("ca1-unit-6b")
    addon = _archiver(env)
    flow = _flow((a, b), _request())
    _run(addon, flow, [b"up"], _response(), [b"down"])
    ra, rb = env.records(a), env.records(b)
    assert [r.data for r in ra] == [r.data for r in rb] and len(ra) == 4
    ids = flow.metadata[FLOW_KEY].record_ids
    assert sorted(ids) == sorted(r.header["id"] for r in ra + rb)
    assert ids[0].startswith(f"{a}/") and ids[1].startswith(f"{b}/")  # per item, per ref


def test_non_subject_flow_is_not_touched(env: Env) -> None:
    addon = _archiver(env)
    flow = tflow.tflow(req=_request())
    flow.metadata[FLOW_KEY] = FlowState(request_id="req-2", started=0.0, refs=())
    addon.requestheaders(flow)
    assert flow.request.stream is False
    flow.response = _response()
    addon.responseheaders(flow)
    assert flow.response.stream is False
    addon.response(flow)
    assert flow.metadata[FLOW_KEY].record_ids == []
    assert not env.paths.archive.exists() or not any(env.paths.archive.iterdir())
    # and a flow Decision never saw (no FlowState) is left alone too
    bare = tflow.tflow(req=_request())
    addon.requestheaders(bare)
    assert bare.request.stream is False and addon.open_flows == 0


def test_unstreamed_bodies_set_by_an_addon_are_archived(env: Env) -> None:
    """A response set by an addon before us (no responseheaders with our stream) and a request
    mitmproxy buffered are still archived whole."""
    ref = env.ref("ca1-unit-7")
    addon = _archiver(env)
    flow = _flow((ref,), _request())
    flow.response = http.Response.make(403, b"misdirected")
    addon.requestheaders(flow)
    assert flow.request.stream is False  # streaming with a response set would crash mitmproxy
    flow.request.content = b"buffered body"
    addon.request(flow)
    addon.response(flow)
    records = env.records(ref)
    kinds = [r.header["kind"] for r in records]
    assert kinds == [rec.REQUEST_HEAD, rec.REQUEST_BODY, rec.RESPONSE_HEAD, rec.RESPONSE_BODY]
    assert records[1].data == b"buffered body" and records[3].data == b"misdirected"
    assert records[2].data.startswith(b"HTTP/1.1 403 Forbidden\r\n")  # as mitmproxy sends it


def test_trailers_are_their_own_records(env: Env) -> None:
    ref = env.ref("ca1-unit-8")
    addon = _archiver(env)
    flow = _flow((ref,), _request())
    addon.requestheaders(flow)
    flow.request.trailers = http.Headers([(b"x-req-sum", b"1")])
    addon.request(flow)
    flow.response = _response()
    addon.responseheaders(flow)
    flow.response.trailers = http.Headers([(b"grpc-status", b"0")])
    addon.response(flow)
    records = env.records(ref)
    assert (rec.REQUEST_TRAILERS, b"x-req-sum: 1\r\n\r\n") in [
        (r.header["kind"], r.data) for r in records
    ]
    assert records[-1].header["kind"] == rec.RESPONSE_TRAILERS
    assert records[-1].data == b"grpc-status: 0\r\n\r\n"


def test_error_keeps_what_streamed_and_says_why(env: Env) -> None:
    ref = env.ref("ca1-unit-9")
    addon = _archiver(env)
    flow = _flow((ref,), _request(method=b"GET"))
    addon.requestheaders(flow)
    addon.request(flow)
    flow.response = _response()
    addon.responseheaders(flow)
    stream = flow.response.stream
    assert callable(stream)
    stream(b"partial-")
    stream(b"body")
    flow.error = tflow.terr("peer closed connection")
    addon.error(flow)
    records = env.records(ref)
    assert [r.header["kind"] for r in records][-2:] == [rec.RESPONSE_BODY, rec.HTTP_ERROR]
    assert records[-2].data == b"partial-body"
    assert json.loads(records[-1].data) == {"error": "peer closed connection"}
    assert addon.open_flows == 0


def test_a_response_before_the_request_ends_keeps_the_rest_of_the_request(env: Env) -> None:
    """A server may answer (e.g. 413) while the upload still streams: the request body that
    follows is still archived, and the flow is forgotten only when both ends are over."""
    ref = env.ref("ca1-unit-10")
    addon = _archiver(env)
    flow = _flow((ref,), _request())
    addon.requestheaders(flow)
    up = flow.request.stream
    assert callable(up)
    up(b"first ")
    flow.response = _response()
    addon.responseheaders(flow)
    addon.response(flow)
    assert addon.open_flows == 1
    up(b"second")
    addon.request(flow)
    assert addon.open_flows == 0
    assert _by_kind(env.records(ref), rec.REQUEST_BODY) == b"first second"


def test_websocket_messages_are_records_and_do_not_pile_up(env: Env) -> None:
    ref = env.ref("ca1-unit-11")
    addon = _archiver(env)
    flow = _flow((ref,), _request(method=b"GET"))
    addon.requestheaders(flow)
    addon.request(flow)
    flow.response = http.Response.make(101, b"", {"Upgrade": "websocket"})
    addon.responseheaders(flow)
    flow.websocket = WebSocketData()
    addon.response(flow)
    sent = [
        (True, Opcode.TEXT, "héllo".encode()),
        (False, Opcode.TEXT, "héllo".encode()),
        (True, Opcode.BINARY, bytes(range(256)) * 10),
        (False, Opcode.BINARY, b""),
    ]
    for from_client, typ, content in sent:
        flow.websocket.messages.append(WebSocketMessage(typ, from_client, content))
        addon.websocket_message(flow)
        assert len(flow.websocket.messages) == 1  # only the newest is kept
        assert flow.websocket.messages[-1].content == content
    flow.websocket.close_code = 1000
    flow.websocket.close_reason = "bye"
    flow.websocket.closed_by_client = True
    addon.websocket_end(flow)
    assert addon.open_flows == 0
    records = env.records(ref)
    ws = [(r.header["kind"], r.data) for r in records[2:]]
    assert ws[:4] == [
        ("websocket-client-text", "héllo".encode()),
        ("websocket-server-text", "héllo".encode()),
        ("websocket-client-binary", bytes(range(256)) * 10),
        ("websocket-server-binary", b""),
    ]
    assert ws[4][0] == rec.WEBSOCKET_END
    assert json.loads(ws[4][1]) == {"close_code": 1000, "close_reason": "bye",
                                    "closed_by_client": True}  # fmt: skip


def test_websocket_messages_of_non_subjects_are_trimmed_too(env: Env) -> None:
    addon = _archiver(env)
    flow = tflow.twebsocketflow()
    flow.metadata[FLOW_KEY] = FlowState(request_id="req-3", started=0.0, refs=())
    for i in range(5):
        flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, True, b"m%d" % i))
        addon.websocket_message(flow)
    assert [m.content for m in flow.websocket.messages] == [b"m4"]


def test_gap_reason_codes_name_the_cause() -> None:
    assert gap_reason(ArchiveError("archive r/000001: cannot write: disk full")) == "disk_full"
    assert gap_reason(ArchiveError("archive r: permission denied")) == "permission_denied"
    assert gap_reason(ArchiveError("something else")) == "write_failed"


def test_an_unexpected_error_is_a_gap_not_a_broken_connection(env: Env) -> None:
    """A fault of ours (here: a clock that raises, injected at the Archiver's clock parameter)
    is audited as a gap like a full disk; the stream callable still relays every chunk."""
    ref = env.ref("ca1-unit-12")

    class BrokenClock(Clock):
        def now(self) -> Any:
            raise RuntimeError("SECRET-IN-MESSAGE")

    addon = Archiver(env.archive, env.audit, "tester", BrokenClock())
    flow = _flow((ref,), _request())
    addon.requestheaders(flow)
    stream = flow.request.stream
    assert callable(stream) and stream(b"x" * 10) == b"x" * 10
    addon.request(flow)
    state = flow.metadata[FLOW_KEY]
    assert state.archive_gap and state.record_ids == [] and addon.counts.gaps == 1
    lines = (env.paths.root / "audit" / "audit.jsonl").read_text().splitlines()
    gap = [json.loads(x) for x in lines if '"capture_gap"' in x][-1]
    assert gap["fields"]["reason"] == "internal_error" and "SECRET" not in json.dumps(gap)

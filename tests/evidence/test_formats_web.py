"""Web export formats: records written by the real web `Archiver` (driven hook by hook with
mitmproxy's objects, several flows at once so their records interleave in one segment) into a real
`Archive`, decrypted, fed to `ExportSet`, and the outputs opened with mitmproxy's own readers:
`FlowReader` for the flow file (bodies byte-exact) and its HAR reader (`request_to_flow`) for
HAR 1.2, whose required structure is checked too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.io import FlowReader
from mitmproxy.io.har import request_to_flow
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from addons.archiver import Archiver
from addons.state import FLOW_KEY, FlowState, conn_state
from appliance.evidence.formats import ExportSet, WrittenFile
from store import ArchiveError, signing
from store import agefile as age
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths
from store.segment import PlainStream, iter_events

REF = "ca1-formats-web"
PRINCIPAL = "p12345"
UP = b"".join(bytes([i % 256]) * 50_000 for i in range(50))  # 2.5 MB, several body records
DOWN = os.urandom(1_500_000)
TEXT = ("caf\u00e9 r\u00e9sum\u00e9 " * 4000).encode()
FORM = "a=1&b=caf\u00e9".encode()
WS = [(Opcode.TEXT, True, b'{"hello": "w\xc3\xb6rld"}'), (Opcode.BINARY, False, b"\x00\xff" * 700)]


class Env:
    def __init__(self, data: Path) -> None:
        self.paths = DataPaths(data)
        key = signing.create(self.paths, "formats-test")  # in-process: no `lbm init` needed
        self.audit = AuditLog(self.paths, key, Clock(), witness=False)
        self.archive = Archive(self.paths, key, Clock(), audit=self.audit)
        secret, public = age.generate()
        self.identity = age.identity_file_text(secret)
        KeyStore(self.paths).create_authorisation_key(REF, [public])

    def events(self) -> Iterator[tuple[str, Any]]:
        """Every framing event of REF's segments, as `lbm evidence open` reads them."""
        self.archive.close()
        ks = KeyStore(self.paths)
        auth = ks.unwrap_authorisation(REF, self.identity)
        for seg in sorted((self.paths.archive / REF).glob("[0-9]*.age")):
            key = ks.unwrap_segment(REF, int(seg.name.split(".")[0]), auth)
            with seg.open("rb") as fh:
                yield from iter_events(PlainStream(age.AgeReader(fh, [key]).chunks()))


def feed(events: Iterator[tuple[str, Any]], out: Path, cut: str | None = None) -> ExportSet:
    """Drive ExportSet as the bundle opener does; `cut`: that record ends incomplete."""
    export = ExportSet(out)
    current = ""
    for kind, value in events:
        if kind == "header":
            current = value["id"]
            export.begin(value)
        elif kind == "data":
            export.data(value)
        else:
            export.end(kind == "end" and not value.get("aborted") and current != cut)
    return export


def _flow(req: http.Request) -> http.HTTPFlow:
    from mitmproxy.test import tflow

    flow = tflow.tflow(req=req)
    flow.metadata[FLOW_KEY] = FlowState(request_id=flow.id, started=0.0, refs=(REF,))
    conn_state(flow.client_conn).principal = PRINCIPAL
    return flow


def _req(method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]],
         authority: bytes = b"") -> http.Request:  # fmt: skip
    return http.Request("www.example.test", 443, method, b"https", authority, target, version,
                        http.Headers(fields), None, None, 0.0, None)  # fmt: skip


def _stream(message: http.Message, chunks: list[bytes]) -> None:
    stream = message.stream
    assert callable(stream)
    for chunk in chunks:
        assert stream(chunk) == chunk
    stream(b"")


def _pieces(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, dict[str, http.HTTPFlow]]:
    """Five flows through the real Archiver, their hooks interleaved like concurrent flows."""
    data = tmp_path_factory.mktemp("web") / "data"
    env = Env(data)
    addon = Archiver(env.archive, env.audit, "tester", Clock())
    upload = _flow(_req(b"POST", b"/upload?x=1", b"HTTP/1.1", [
        (b"Host", b"files.example.test"), (b"Content-Type", b"application/octet-stream"),
        (b"Content-Length", str(len(UP)).encode()),
        (b"Proxy-Authorization", b"Basic c2VjcmV0")]))  # fmt: skip
    page = _flow(_req(b"GET", b"/page", b"HTTP/2.0", [(b"accept", b"text/html")],
                      authority=b"www.example.test"))  # fmt: skip
    failed = _flow(_req(b"GET", b"/down", b"HTTP/1.1", [(b"Host", b"gone.example.test")]))
    ws = _flow(_req(b"GET", b"/socket", b"HTTP/1.1", [(b"Host", b"ws.example.test"),
                                                      (b"Upgrade", b"websocket")]))  # fmt: skip
    grpc = _flow(_req(b"POST", b"/svc/M", b"HTTP/2.0", [(b"content-type", b"application/grpc")],
                      authority=b"api.example.test:8443"))  # fmt: skip
    form = _flow(_req(b"POST", b"/form", b"HTTP/1.1", [(b"Host", b"www.example.test"),
                      (b"Content-Type", b"application/x-www-form-urlencoded")]))  # fmt: skip
    flows = {"upload": upload, "page": page, "failed": failed, "ws": ws, "grpc": grpc,
             "form": form}  # fmt: skip
    for f in flows.values():
        addon.requestheaders(f)
    _stream(upload.request, _pieces(UP, 3)[:2])  # upload half-way...
    addon.request(page)  # ...while the others go on
    page.response = http.Response(b"HTTP/2.0", 200, b"", http.Headers(
        [(b"content-type", b"text/html; charset=utf-8"), (b"content-encoding", b"gzip")]),
        None, None, 0.0, None)  # fmt: skip
    addon.responseheaders(page)
    addon.request(failed)
    _stream(upload.request, _pieces(UP, 3)[2:])
    addon.request(upload)
    _stream(page.response, [gzip.compress(TEXT, mtime=0)])
    from mitmproxy import flow as mflow

    failed.error = mflow.Error("Connection reset by peer")
    addon.error(failed)
    upload.response = http.Response(b"HTTP/1.1", 201, b"Created", http.Headers(
        [(b"Content-Type", b"application/octet-stream"),
         (b"Content-Length", str(len(DOWN)).encode())]), None, None, 0.0, None)  # fmt: skip
    addon.responseheaders(upload)
    _stream(upload.response, _pieces(DOWN, 2))
    addon.request(ws)
    ws.response = http.Response.make(101, b"", {"Upgrade": "websocket"})
    addon.responseheaders(ws)
    ws.websocket = WebSocketData()
    addon.response(ws)
    for typ, from_client, content in WS:
        ws.websocket.messages.append(WebSocketMessage(typ, from_client, content))
        addon.websocket_message(ws)
    ws.websocket.close_code, ws.websocket.close_reason = 1000, "bye"
    ws.websocket.closed_by_client = True
    addon.websocket_end(ws)
    addon.response(upload)
    addon.response(page)
    grpc.request.stream = None
    grpc.request.raw_content = b"\x00\x00\x00\x00\x03abc"
    addon.request(grpc)
    grpc.response = http.Response(b"HTTP/2.0", 200, b"", http.Headers(
        [(b"content-type", b"application/grpc")]), b"\x00\x00\x00\x00\x02ok",
        http.Headers([(b"grpc-status", b"0")]), 0.0, None)  # fmt: skip
    addon.response(grpc)
    form.request.stream = None
    form.request.raw_content = FORM
    addon.request(form)
    form.response = http.Response(b"HTTP/1.1", 204, b"No Content", http.Headers(), b"", None,
                                  0.0, None)  # fmt: skip
    addon.response(form)
    return env, flows


@pytest.fixture(scope="module")
def exported(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[WrittenFile], ExportSet]:
    env, _ = session
    out = tmp_path_factory.mktemp("out") / "export"
    export = feed(env.events(), out)
    return out, export.close(), export


def test_the_records_really_interleave(session: tuple[Env, dict[str, http.HTTPFlow]]) -> None:
    env, flows = session
    order = [v["flow"] for k, v in env.events() if k == "header"]
    upload = flows["upload"].id
    first, last = order.index(upload), len(order) - 1 - order[::-1].index(upload)
    assert set(order[first:last]) - {upload}, "other flows' records sit inside the upload's"


def test_flow_file_loads_in_mitmproxy_with_the_archived_bodies(
    session: tuple[Env, dict[str, http.HTTPFlow]], exported: tuple[Path, list[WrittenFile], Any]
) -> None:
    _, flows = session
    out, _, _ = exported
    with (out / "web/flows.mitm").open("rb") as fh:
        loaded = {f.id: f for f in FlowReader(fh).stream()}
    assert set(loaded) == {f.id for f in flows.values()}
    # each flow written as soon as it is over (error, WebSocket end, Content-Length reached,
    # trailers), the rest (bodies of unknown length) at close in order of their first record
    order = ["failed", "upload", "ws", "grpc", "form", "page"]
    names = {f.id: name for name, f in flows.items()}
    assert [names[i] for i in loaded] == order
    up = loaded[flows["upload"].id]
    assert isinstance(up, http.HTTPFlow) and up.response is not None
    assert up.request.raw_content == UP and up.response.raw_content == DOWN
    assert up.request.pretty_url == "https://files.example.test/upload?x=1"
    assert up.request.headers["Proxy-Authorization"] == "[redacted]"
    assert up.response.status_code == 201
    page = loaded[flows["page"].id]
    assert page.response is not None and page.request.http_version == "HTTP/2.0"
    assert page.response.raw_content == gzip.compress(TEXT, mtime=0)  # coding kept as sent
    assert page.response.content == TEXT
    assert page.request.pretty_url == "https://www.example.test/page"
    failed = loaded[flows["failed"].id]
    assert failed.response is None and failed.error is not None
    assert failed.error.msg == "Connection reset by peer"
    ws = loaded[flows["ws"].id]
    assert ws.response is not None and ws.response.status_code == 101 and ws.websocket
    assert [(m.type, m.from_client, m.content) for m in ws.websocket.messages] == WS
    assert (ws.websocket.close_code, ws.websocket.close_reason) == (1000, "bye")
    grpc = loaded[flows["grpc"].id]
    assert grpc.request.pretty_url == "https://api.example.test:8443/svc/M"
    assert grpc.request.raw_content == b"\x00\x00\x00\x00\x03abc"
    assert grpc.response is not None and grpc.response.trailers is not None
    assert grpc.response.trailers["grpc-status"] == "0"


def test_har_has_the_required_structure_and_reloads_with_mitmproxy(
    session: tuple[Env, dict[str, http.HTTPFlow]], exported: tuple[Path, list[WrittenFile], Any]
) -> None:
    _, flows = session
    out, _, _ = exported
    har = json.loads((out / "web/flows.har").read_bytes())
    log = har["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] and log["creator"]["version"]
    assert len(log["entries"]) == len(flows)
    for entry in log["entries"]:
        for key in ("startedDateTime", "time", "request", "response", "cache", "timings"):
            assert key in entry, key
        for key in ("method", "url", "httpVersion", "cookies", "headers", "queryString",
                    "headersSize", "bodySize"):  # fmt: skip
            assert key in entry["request"], key
        for key in ("status", "statusText", "httpVersion", "cookies", "headers", "content",
                    "redirectURL", "headersSize", "bodySize"):  # fmt: skip
            assert key in entry["response"], key
        assert all(k in entry["timings"] for k in ("send", "wait", "receive"))
        assert entry["_lbm_record_ids"] and all(
            r.startswith(f"{REF}/") for r in entry["_lbm_record_ids"]
        )
    by_url = {e["request"]["url"]: request_to_flow(e) for e in log["entries"]}
    up = by_url["https://files.example.test/upload?x=1"]
    assert up.response is not None and up.response.content == DOWN
    (upload,) = [e for e in log["entries"] if e["request"]["method"] == "POST" and "x=1" in
                 e["request"]["url"]]  # fmt: skip
    assert upload["request"]["postData"]["_encoding"] == "base64"  # a binary upload, exact
    assert base64.b64decode(upload["request"]["postData"]["text"]) == UP
    page = by_url["https://www.example.test/page"]
    assert page.response is not None and page.response.content == TEXT
    assert by_url["https://www.example.test/form"].request.content == FORM
    (grpc,) = [e for e in log["entries"] if e["request"]["url"].endswith("/svc/M")]
    assert grpc["request"]["postData"]["_encoding"] == "base64"  # binary: not lossy text
    assert base64.b64decode(grpc["request"]["postData"]["text"]) == b"\x00\x00\x00\x00\x03abc"
    with (out / "web/flows.har").open("rb") as fh:  # mitmproxy's reader takes HAR files too
        assert len(list(FlowReader(fh).stream())) == len(flows)


def test_files_are_private_hashed_and_list_every_record(
    session: tuple[Env, dict[str, http.HTTPFlow]], exported: tuple[Path, list[WrittenFile], Any]
) -> None:
    env, _ = session
    out, files, export = exported
    assert {f.path for f in files} == {"web/flows.mitm", "web/flows.har"}
    for f in files:
        blob = (out / f.path).read_bytes()
        assert (hashlib.sha256(blob).hexdigest(), len(blob)) == (f.sha256, f.size)
        assert stat.S_IMODE((out / f.path).stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "web").stat().st_mode) == 0o700
    assert sorted(os.listdir(out / "web")) == ["flows.har", "flows.mitm"]  # no staging left
    ids = {v["id"] for k, v in env.events() if k == "header"}
    assert set(files[0].record_ids) == set(files[1].record_ids) == ids
    assert export.incomplete == []
    assert b"c2VjcmV0" not in (out / "web/flows.mitm").read_bytes()  # the proxy password


def test_a_cut_off_body_is_exported_as_far_as_it_goes_and_listed(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    env, flows = session
    events = list(env.events())
    body_ids = [v["id"] for k, v in events if k == "header" and v["kind"] == "http-response-body"
                and v["flow"] == flows["upload"].id]  # fmt: skip
    cut_id = body_ids[-1]
    kept: list[tuple[str, Any]] = []
    inside, seen, limit, cut_len = False, 0, 400_000, 0
    for kind, value in events:  # the last response body record stops after 400 kB
        if kind == "header":
            inside = value["id"] == cut_id
        if inside and kind == "data":
            value, seen = value[: max(0, limit - seen)], seen + len(value)
        if inside and kind == "end":
            cut_len = value["length"]
        kept.append((kind, value))
    export = feed(iter(kept), tmp_path / "out", cut=cut_id)
    export.close()
    assert export.incomplete == [cut_id]
    with (tmp_path / "out/web/flows.mitm").open("rb") as fh:
        up = next(f for f in FlowReader(fh).stream() if f.id == flows["upload"].id)
    assert isinstance(up, http.HTTPFlow) and up.response is not None
    before = len(DOWN) - cut_len  # the body's earlier records, then the cut one's first 400 kB
    assert up.response.raw_content == DOWN[: before + limit]


def test_records_without_a_flow_field_group_by_adjacency(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    """Archives written before the header carried `flow`: flows one after the other (here the
    WebSocket's records, then the gRPC call's, each record's events kept whole) still export."""
    env, flows = session
    records: dict[str, list[tuple[str, Any]]] = {flows["ws"].id: [], flows["grpc"].id: []}
    target: list[tuple[str, Any]] | None = None
    for kind, value in env.events():
        if kind == "header":
            target = records.get(value["flow"])
            value = {k: v for k, v in value.items() if k not in ("flow", "scheme")}
        if target is not None:
            target.append((kind, value))
    events = records[flows["ws"].id] + records[flows["grpc"].id]
    export = feed(iter(events), tmp_path / "out")
    export.close()
    with (tmp_path / "out/web/flows.mitm").open("rb") as fh:
        loaded = list(FlowReader(fh).stream())
    assert [f.request.path for f in loaded] == ["/socket", "/svc/M"]
    assert loaded[1].response.raw_content == b"\x00\x00\x00\x00\x02ok"


def test_extra_header_fields_cannot_replace_the_framing_fields(
    session: tuple[Env, dict[str, http.HTTPFlow]],
) -> None:
    """The web flow id rides in the header; a channel cannot use that to forge an id or kind."""
    env, _ = session
    for extra in ({"id": "other/000001/1"}, {"kind": "message"}, {"flow": "a\nb"}, {"Flow": "x"}):
        with pytest.raises(ArchiveError, match="extra header field"):
            env.archive.open_record(REF, "web", PRINCIPAL, "2026-03-01T09:00:00Z", "x", extra=extra)


def _peak(events: list[tuple[str, Any]], out: Path) -> int:
    """Peak traced memory of exporting `events` (what ExportSet allocates, not the events)."""
    tracemalloc.start()
    try:
        export = ExportSet(out)
        for kind, value in events:
            if kind == "header":
                export.begin(value)
            elif kind == "data":
                export.data(value)
            else:
                export.end(True)
        export.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bodies_of_interleaved_flows_are_staged_not_held(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    """Three copies of the upload flow (4 MB of bodies each, other flow ids), interleaved record
    by record: while records stream in, no body sits in memory; writing holds one flow at a
    time, not all three."""
    env, flows = session
    records: list[list[tuple[str, Any]]] = []
    for kind, value in env.events():
        if kind == "header":
            records.append([])
        records[-1].append((kind, value))
    upload = [r for r in records if r[0][1]["flow"] == flows["upload"].id]

    def copies(n: int) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        for parts in zip(*([upload] * n), strict=True):
            for copy, record in enumerate(parts):
                old = record[0][1]
                header = old | {"flow": f"copy-{copy}", "id": f"{old['id']}.{copy}"}
                events += [("header", header), *record[1:]]
        return events

    one = _peak(copies(1), tmp_path / "1")
    three = _peak(copies(3), tmp_path / "out")
    assert three < 1.5 * one, (three, one)  # not 3x: the flows were written one at a time
    assert one < 6 * (len(UP) + len(DOWN)), one
    with (tmp_path / "out/web/flows.mitm").open("rb") as fh:
        loaded = list(FlowReader(fh).stream())
    assert [f.id for f in loaded] == ["copy-0", "copy-1", "copy-2"]
    assert all(f.request.raw_content == UP and f.response.raw_content == DOWN for f in loaded)


def _by_record(env: Env) -> list[list[tuple[str, Any]]]:
    records: list[list[tuple[str, Any]]] = []
    for kind, value in env.events():
        if kind == "header":
            records.append([])
        records[-1].append((kind, value))
    return records


def test_body_pieces_join_in_record_order_whatever_the_feed_order(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    env, flows = session
    records = _by_record(env)
    bodies = [r for r in records if r[0][1]["flow"] == flows["upload"].id
              and r[0][1]["kind"] == "http-request-body"]  # fmt: skip
    assert len(bodies) >= 2
    records.remove(bodies[0])
    records.append(bodies[0])  # e.g. segments fed in another order than they were written
    export = feed(iter([e for r in records for e in r]), tmp_path / "out")
    export.close()
    with (tmp_path / "out/web/flows.mitm").open("rb") as fh:
        up = next(f for f in FlowReader(fh).stream() if f.id == flows["upload"].id)
    assert up.request.raw_content == UP


def test_a_flow_without_its_request_head_is_kept_as_parts(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    """A record selection or a truncated segment lost the head: nothing is dropped or made up."""
    env, flows = session
    records = [r for r in _by_record(env) if r[0][1]["flow"] == flows["upload"].id]
    first = records[1][0][1]["id"]
    export = feed(iter([e for r in records[1:] for e in r]), tmp_path / "out")
    files = {f.path: f for f in export.close()}
    base = f"web/unpaired/{first.replace('/', '_')}."
    assert set(files) == {base + p for p in ("request-body", "response-body", "http-response-head")}
    assert (tmp_path / "out" / (base + "request-body")).read_bytes() == UP
    assert (tmp_path / "out" / (base + "response-body")).read_bytes() == DOWN
    assert (
        (tmp_path / "out" / (base + "http-response-head")).read_bytes().startswith(b"HTTP/1.1 201")
    )
    assert all(f.record_ids == [r[0][1]["id"] for r in records[1:]] for f in files.values())


@pytest.mark.parametrize(
    ("method", "scheme", "authority", "path", "version", "host", "port", "url"),
    [
        (b"GET", b"https", b"", b"/a?b=1", b"HTTP/1.1", "h.test", 443, "https://h.test/a?b=1"),
        (b"GET", b"http", b"h.test:8080", b"/x", b"HTTP/1.1", "h.test", 8080, "http://h.test:8080/x"),
        (b"GET", b"https", b"[2001:db8::1]:8443", b"/v6", b"HTTP/2.0", "2001:db8::1", 8443,
         None),  # mitmproxy's own URL drops the brackets: compared with the original's below
        (b"CONNECT", b"", b"tunnel.test:443", b"", b"HTTP/1.1", "tunnel.test", 443, None),
        (b"PUT", b"https", b"h.test", b"/up", b"HTTP/3", "h.test", 443, "https://h.test/up"),
    ],
)  # fmt: skip
def test_heads_rebuild_as_the_proxy_saw_them(
    method: bytes, scheme: bytes, authority: bytes, path: bytes, version: bytes, host: str,
    port: int, url: str | None,
) -> None:  # fmt: skip
    """The archive's own head writer (addons/archive_records) and the export's reader agree."""
    from addons import archive_records as rec
    from appliance.evidence.formats.web_build import build_request, build_response

    fields = [(b"Host", (authority or b"h.test")), (b"X-Twice", b"1"), (b"X-Twice", b"2: a")]
    original = http.Request(host, port, method, scheme, authority, path, version,
                            http.Headers(fields), None, None, 0.0, None)  # fmt: skip
    rebuilt = build_request(rec.request_head(original), scheme.decode() or "https", 1.0)
    assert (rebuilt.method, rebuilt.http_version) == (original.method, original.http_version)
    assert (rebuilt.host, rebuilt.port) == (host, port)
    assert rebuilt.headers.fields == original.headers.fields  # order, repeats, ": " in values
    assert (rebuilt.url, rebuilt.path) == (original.url, original.path)
    if url is not None:
        assert rebuilt.pretty_url == url
    response = http.Response(version, 404, b"", http.Headers([(b"A", b"b")]), None, None, 0, 0)
    back = build_response(rec.response_head(response), 1.0)
    assert (back.status_code, back.headers.fields) == (404, ((b"A", b"b"),))
    assert back.reason == ("Not Found" if version == b"HTTP/1.1" else "")


def test_one_flow_archived_for_two_refs_keeps_both_and_ids_stay_unique(
    session: tuple[Env, dict[str, http.HTTPFlow]], tmp_path: Path
) -> None:
    """A subject under two authorisations: the same flow id in both refs' records."""
    env, flows = session
    records = [r for r in _by_record(env) if r[0][1]["flow"] == flows["grpc"].id]
    other = [
        [("header", r[0][1] | {"id": r[0][1]["id"].replace(REF, "ca1-other")}), *r[1:]]
        for r in records
    ]
    export = feed(iter([e for r in records + other for e in r]), tmp_path / "out")
    export.close()
    with (tmp_path / "out/web/flows.mitm").open("rb") as fh:
        loaded = list(FlowReader(fh).stream())
    assert len(loaded) == 2 and len({f.id for f in loaded}) == 2
    assert loaded[0].id == flows["grpc"].id
    assert all(f.response.trailers["grpc-status"] == "0" for f in loaded)

"""Web records into a mitmproxy flow file (`web/flows.mitm`) and HAR 1.2 (`web/flows.har`).

Records of concurrent flows interleave in a segment, so records are grouped by the `flow` field
of their header (the mitmproxy flow id the proxy writes, per reference), never by adjacency.
Records written before that field existed fall back to adjacency: a request head starts a flow
and the records after it, up to the next request head of the same reference, belong to it.

Heads, trailers, errors and WebSocket close records are small and kept with their flow; body
pieces and WebSocket messages go to one anonymous staging file in the output directory (opened
with O_TMPFILE semantics, so it never has a name and disappears with the process), and only the
flow being written has its bodies in memory. A flow is written when it is over (an `http-error`
or `websocket-end` record, or a response whose body reached its Content-Length or has none by
its status) and otherwise at close, in order of its first record: once to the flow file with
`mitmproxy.io.FlowWriter`, and once as a HAR entry with mitmproxy's own
`SaveHar().flow_entry`, streamed into the HAR's JSON envelope. Bodies in the flow file are the
archived bytes exactly (content coding kept); a HAR entry adds `_lbm_record_ids`.

Records of a flow with no request head (its first records are not in the export) cannot make a
flow: they are written as they are under `web/unpaired/` (see `_write_unpaired`).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mitmproxy import connection, http
from mitmproxy import flow as mflow
from mitmproxy.addons.savehar import SaveHar
from mitmproxy.io import FlowWriter
from mitmproxy.utils import strutils
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from appliance.evidence.formats.files import OutFile, WrittenFile, safe_name
from appliance.evidence.formats.web_build import build_request, build_response, parse_fields

FLOWS = "web/flows.mitm"
HAR = "web/flows.har"
SMALL_MAX = 16 << 20  # a head, trailer or close record bigger than this is cut (never seen)
NO_BODY = frozenset({204, 304})
QUIET_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
BIG = 1 << 20  # bodies from which a written flow is freed at once (see _emit)
_ENCODER = json.JSONEncoder(ensure_ascii=False)
Extent = tuple[int, int]  # (offset, length) in the staging file
Order = tuple[int, int, int]  # (segment, record number, feed sequence)


@dataclass
class _Flow:
    key: tuple[str, str]
    flow_id: str | None
    scheme: str
    record_ids: list[str] = field(default_factory=list)
    heads: dict[str, bytes] = field(default_factory=dict)  # kind -> bytes (small records)
    times: dict[str, float] = field(default_factory=dict)  # first/last request/response ts
    # "request"/"response" -> (record order, extents) per body record
    bodies: dict[str, list[tuple[Order, list[Extent]]]] = field(default_factory=dict)
    body_len: dict[str, int] = field(default_factory=dict)
    ws: list[tuple[Order, str, float, list[Extent]]] = field(default_factory=list)


def _ts(header: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(header.get("ts")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _order(record_id: str, seq: int) -> Order:
    parts = record_id.rsplit("/", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2]), seq
    return 0, 0, seq


def _version() -> str:
    try:
        return metadata.version("lbm-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


class WebWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.damaged: list[str] = []
        # O_TMPFILE: no name; closed in close()
        self._stage = tempfile.TemporaryFile(dir=out_dir, buffering=0)  # noqa: SIM115
        self._stage_end = 0
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._last: dict[str, tuple[str, str]] = {}  # ref -> key of its latest flow (fallback)
        self._fallback = 0
        self._seq = 0
        self._ids: set[str] = set()  # flow ids written
        self._current: _Flow | None = None
        self._kind = ""
        self._small: bytearray | None = None
        self._extents: list[Extent] | None = None
        self._flow_file: OutFile | None = None
        self._har: OutFile | None = None
        self._writer: FlowWriter | None = None
        self._har_entries = 0
        self._servers: set[connection.Server] = set()
        self._unpaired: list[WrittenFile] = []
        self._savehar = SaveHar()

    # -- records ------------------------------------------------------------------------------
    def begin(self, header: dict[str, Any]) -> None:
        record_id = str(header["id"])
        ref = record_id.split("/", 1)[0]
        kind = str(header.get("kind", ""))
        flow_id = header.get("flow")
        if isinstance(flow_id, str) and flow_id:
            key = (ref, flow_id)
        elif kind == "http-request-head" or ref not in self._last:
            self._fallback += 1
            key = (ref, f"#{self._fallback}")
        else:
            key = self._last[ref]
        fl = self._flows.get(key)
        if fl is None:
            fid = flow_id if isinstance(flow_id, str) else None
            fl = self._flows[key] = _Flow(key, fid, str(header.get("scheme") or "https"))
        self._last[ref] = key
        fl.record_ids.append(record_id)
        ts = _ts(header)
        side = "request" if "-request-" in kind else "response" if "-response-" in kind else ""
        if side:
            fl.times.setdefault(f"{side}_start", ts)
            fl.times[f"{side}_end"] = ts
        self._current, self._kind = fl, kind
        self._small = self._extents = None
        self._seq += 1
        order = _order(record_id, self._seq)
        if kind in ("http-request-body", "http-response-body"):
            self._extents = []
            fl.bodies.setdefault(side, []).append((order, self._extents))
        elif kind.startswith("websocket-") and kind != "websocket-end":
            self._extents = []
            fl.ws.append((order, kind, ts, self._extents))
        else:
            self._small = bytearray()

    def data(self, chunk: bytes) -> None:
        if self._extents is not None:
            view = memoryview(chunk)
            while view:
                view = view[
                    os.pwrite(
                        self._stage.fileno(), view, self._stage_end + len(chunk) - len(view)
                    ) :
                ]
            start, self._stage_end = self._stage_end, self._stage_end + len(chunk)
            if self._extents and sum(self._extents[-1]) == start:
                self._extents[-1] = (self._extents[-1][0], self._extents[-1][1] + len(chunk))
            else:
                self._extents.append((start, len(chunk)))
        elif self._small is not None:
            if len(self._small) + len(chunk) > SMALL_MAX and self._current is not None:
                record_id = self._current.record_ids[-1]
                if record_id not in self.damaged[-1:]:
                    self.damaged.append(record_id)  # cut here: listed incomplete
            self._small += chunk[: max(0, SMALL_MAX - len(self._small))]

    def end(self, complete: bool) -> None:
        fl, kind = self._current, self._kind
        assert fl is not None
        if self._small is not None:
            fl.heads[kind] = fl.heads.get(kind, b"") + bytes(self._small)
        elif self._extents is not None and kind.endswith("-body"):
            side = "request" if "-request-" in kind else "response"
            fl.body_len[side] = fl.body_len.get(side, 0) + sum(n for _, n in self._extents)
        self._current = None
        self._small = self._extents = None
        if self._over(fl, kind):
            self._emit(fl)

    @staticmethod
    def _over(fl: _Flow, kind: str) -> bool:
        if kind in ("http-error", "websocket-end"):
            return True
        if not kind.startswith("http-response") or "http-request-head" not in fl.heads:
            return False
        head = fl.heads.get("http-response-head")
        if head is None:
            return False
        response = build_response(head, 0.0)
        status = response.status_code
        if status == 101 or "http-response-trailers" in fl.heads:
            return status != 101
        if (
            status in NO_BODY
            or 100 <= status < 200
            or fl.heads["http-request-head"][:5] == b"HEAD "
        ):
            return WebWriter._request_over(fl)
        length = response.headers.get("content-length", "")
        done = length.isdigit() and fl.body_len.get("response", 0) == int(length)
        return done and WebWriter._request_over(fl)

    @staticmethod
    def _request_over(fl: _Flow) -> bool:
        """The request's body is whole (a server may answer before an upload ends): its
        Content-Length reached, or none and no transfer coding in HTTP/1 (no body, RFC 9112
        6.3), or a method sent without a body in HTTP/2 and 3 (whose framing the head lacks)."""
        request = build_request(fl.heads["http-request-head"], fl.scheme, 0.0)
        length = request.headers.get("content-length", "")
        if length.isdigit():
            return fl.body_len.get("request", 0) == int(length)
        if "transfer-encoding" in request.headers:
            return False
        return request.http_version.startswith("HTTP/1") or request.method in QUIET_METHODS

    # -- output -------------------------------------------------------------------------------
    def _body(self, fl: _Flow, side: str) -> bytes:
        """A message body: its records' pieces in record-id order (the order they were
        written, whatever order the export was fed in)."""
        return b"".join(self._read(e) for _, e in sorted(fl.bodies.get(side, [])))

    def _read(self, extents: list[Extent]) -> bytes:
        return b"".join(os.pread(self._stage.fileno(), n, off) for off, n in extents)

    def _emit(self, fl: _Flow) -> None:
        self._flows.pop(fl.key, None)
        if self._last.get(fl.key[0]) == fl.key:
            del self._last[fl.key[0]]
        if "http-request-head" not in fl.heads:
            self._write_unpaired(fl)
            return
        flow = self._build(fl)
        if self._writer is None:
            self._flow_file = OutFile(self.out_dir, FLOWS)
            self._har = OutFile(self.out_dir, HAR)
            self._writer = FlowWriter(self._flow_file)
            creator = {"name": "lbm-gateway", "version": _version(), "comment": "lbm evidence"}
            envelope = {"version": "1.2", "creator": creator, "pages": []}
            self._har.write(json.dumps({"log": envelope})[:-2].encode() + b', "entries": [\n')
        assert self._flow_file is not None and self._har is not None
        self._writer.add(flow)
        entry = self._savehar.flow_entry(flow, self._servers)
        request = flow.request
        self._post_data(request, entry["request"])
        entry["_lbm_record_ids"] = fl.record_ids
        if self._har_entries:
            self._har.write(b",\n")
        for piece in _ENCODER.iterencode(entry):  # no second copy of the entry as one string
            self._har.write(piece.encode("utf-8", "surrogatepass"))
        self._har_entries += 1
        self._flow_file.record_ids += fl.record_ids
        self._har.record_ids += fl.record_ids
        response = flow.response
        size = len(request.raw_content or b"") + len((response and response.raw_content) or b"")
        if size > BIG:
            # mitmproxy's type checks raise and catch exceptions while building messages; their
            # tracebacks keep this call's frames, and with them the bodies, in reference cycles
            # until the collector runs: free a big flow now, before the next is read
            del flow, entry, request, response
            gc.collect(1)

    @staticmethod
    def _post_data(request: http.Request, har_request: dict[str, Any]) -> None:
        """Every request body in `postData` (savehar gives it for POST, PUT and PATCH only);
        a mostly binary one as base64 with `_encoding` (HAR 1.2 has no field for it: its
        `text` is text), not as lossily decoded text."""
        body = request.raw_content
        if not body:
            return
        post = har_request.setdefault("postData", {"params": []})
        post["mimeType"] = request.headers.get("Content-Type", "")
        try:
            content = request.content or b""
        except ValueError:  # a content coding that does not decode: keep it as sent
            content = body
        if strutils.is_mostly_bin(content):
            post["text"] = base64.b64encode(content).decode()
            post["_encoding"] = "base64"
        elif "text" not in post:
            post["text"] = request.get_text(strict=False)

    def _build(self, fl: _Flow) -> http.HTTPFlow:
        t = fl.times
        request = build_request(fl.heads["http-request-head"], fl.scheme, t["request_start"])
        request.raw_content = self._body(fl, "request")
        request.timestamp_end = t.get("request_end")
        if "http-request-trailers" in fl.heads:
            request.trailers = parse_fields(fl.heads["http-request-trailers"])
        client = connection.Client(
            peername=("0.0.0.0", 0), sockname=("0.0.0.0", 0), timestamp_start=t["request_start"]
        )
        server = connection.Server(address=(request.host, request.port))
        flow = http.HTTPFlow(client, server)
        if fl.flow_id is not None and fl.flow_id not in self._ids:  # one flow, several refs:
            flow.id = fl.flow_id  # the first keeps the proxy's id, the others get new ones
            self._ids.add(fl.flow_id)
        flow.request = request
        if "http-response-head" in fl.heads:
            start = t.get("response_start", t["request_start"])
            response = build_response(fl.heads["http-response-head"], start)
            response.raw_content = self._body(fl, "response")
            response.timestamp_end = t.get("response_end", start)
            if "http-response-trailers" in fl.heads:
                response.trailers = parse_fields(fl.heads["http-response-trailers"])
            flow.response = response
        if "http-error" in fl.heads:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                msg = json.loads(fl.heads["http-error"])["error"]
                flow.error = mflow.Error(str(msg))
            if flow.error is None:
                flow.error = mflow.Error("error (record unreadable)")
        if fl.ws or "websocket-end" in fl.heads:
            flow.websocket = self._websocket(fl)
        flow.comment = "lbm records " + " ".join(fl.record_ids)
        return flow

    def _websocket(self, fl: _Flow) -> WebSocketData:
        ws = WebSocketData()
        for _, kind, ts, extents in sorted(fl.ws):
            opcode = Opcode.TEXT if kind.endswith("-text") else Opcode.BINARY
            content = self._read(extents)
            ws.messages.append(WebSocketMessage(opcode, "-client-" in kind, content, ts))
        with contextlib.suppress(ValueError, TypeError, KeyError):
            end = json.loads(fl.heads.get("websocket-end", b""))
            ws.close_code, ws.close_reason = end["close_code"], end["close_reason"]
            ws.closed_by_client = end["closed_by_client"]
        return ws

    def _write_unpaired(self, fl: _Flow) -> None:
        """A flow whose request head is not in the export: each part as it is, in
        `web/unpaired/FIRST.PART` (FIRST its first record id): `request-body`, `response-body`
        (pieces joined in record order), `http-response-head`..., `websocket-...-N`."""
        first = safe_name(fl.record_ids[0])
        parts: list[tuple[str, list[list[Extent]] | bytes]] = [
            (f"{side}-body", [e for _, e in sorted(pieces)]) for side, pieces in fl.bodies.items()
        ]
        parts += [(kind, data) for kind, data in fl.heads.items()]
        parts += [(f"{k}-{n}", [e]) for n, (_, k, _, e) in enumerate(sorted(fl.ws), 1)]
        for name, content in parts:
            out = OutFile(self.out_dir, f"web/unpaired/{first}.{name}")
            out.record_ids += fl.record_ids
            if isinstance(content, bytes):
                out.write(content)
            else:
                for extents in content:
                    out.write(self._read(extents))
            self._unpaired.append(out.close())

    def close(self) -> list[WrittenFile]:
        for fl in list(self._flows.values()):
            self._emit(fl)
        self._stage.close()
        files = list(self._unpaired)
        if self._flow_file is not None and self._har is not None:
            files.append(self._flow_file.close())
            self._har.write(b"\n]}}\n")
            files.append(self._har.close())
        return files

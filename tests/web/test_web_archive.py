"""A subject's web sessions through the real `lbm proxy run`, decrypted with the investigator's
identity: HTTP/1.1 (curl), HTTP/2 (httpx) and WebSocket (websockets), byte-exact, with the
metadata rows naming exactly the records; a non-subject's traffic reaches no archive.

Everything real: `lbm init`, identity import, investigator, `lbm auth grant`, the daemon, the
hypercorn upstream over TLS with a test CA (tests/support/web_upstream.py), real clients
binding the subject's (127.0.0.2) or the non-subject's (127.0.0.3) address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from lbm_testing import Lbm
from web_archive_support import (
    OTHER_IP,
    REF,
    SUBJECT,
    SUBJECT_IP,
    ProxyDaemon,
    archive_items,
    body_sha256,
    client_bundle,
    curl,
    files_containing,
    record_order,
    setup_subject,
    web_rows,
)
from web_upstream import Upstream
from websockets.asyncio.client import connect

from addons import archive_records as rec

SUBJECT_CANARY = "SUBJ-CANARY-4be07c"
OTHER_CANARY = "OTHER-CANARY-e3a5d1"


@pytest.fixture
def env(lbm: Lbm, tmp_path: Path, upstream: Upstream) -> dict[str, Any]:
    identity = setup_subject(lbm, tmp_path, upstream)
    return {"identity": identity, "logs": tmp_path / "logs", "tmp": tmp_path}


class _BoundBackend(httpcore.SyncBackend):
    """httpcore's own socket backend, connecting from a chosen local address."""

    def __init__(self, local_address: str) -> None:
        self.local = local_address

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Any = None,
    ) -> Any:  # fmt: skip
        return super().connect_tcp(host, port, timeout, self.local, socket_options)


def test_http1_session_archived_byte_exact_and_named_by_the_row(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    body = (SUBJECT_CANARY.encode() + bytes(range(256))) * 5000  # 1.3 MB, binary
    (env["tmp"] / "body.bin").write_bytes(body)
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        url = upstream.url(f"/echo/{SUBJECT_CANARY}?q={SUBJECT_CANARY}")
        got = curl(proxy, bundle, SUBJECT_IP, "--http1.1", "-H", f"X-Canary: {SUBJECT_CANARY}",
                   "--data-binary", f"@{env['tmp'] / 'body.bin'}", url)  # fmt: skip
        assert got.returncode == 0, got.stderr
        echoed = json.loads(got.stdout)
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    items = archive_items(lbm.data_dir, REF, env["identity"])
    kinds = [i.header["kind"] for i in items]
    assert kinds[0] == rec.REQUEST_HEAD and rec.RESPONSE_HEAD in kinds
    head = items[0].head
    assert head.startswith(f"POST /echo/{SUBJECT_CANARY}?q={SUBJECT_CANARY} HTTP/1.1\r\n".encode())
    assert f"X-Canary: {SUBJECT_CANARY}\r\n".encode() in head
    up_body = [i for i in items if i.header["kind"] == rec.REQUEST_BODY]
    assert sum(i.length for i in up_body) == len(body)
    assert all(i.length >= 1 << 20 for i in up_body[:-1])  # coalesced, not one per TCP read
    pos = 0
    for i in up_body:  # each record is an exact slice of the body, in order
        assert i.sha256 == hashlib.sha256(body[pos : pos + i.length]).hexdigest()
        pos += i.length
    resp_ids = {i.header["id"] for i in items if i.header["kind"] == rec.RESPONSE_BODY}
    digest, length = body_sha256(lbm.data_dir, REF, env["identity"], resp_ids)
    assert (digest, length) == (hashlib.sha256(got.stdout).hexdigest(), len(got.stdout))
    assert all(i.header["principal"] == SUBJECT and i.header["channel"] == "web" for i in items)

    rows = [r for r in web_rows(lbm.data_dir) if r["refs"]]
    assert len(rows) == 1
    (row,) = rows
    assert row["refs"] == [REF] and row["principal"] == SUBJECT
    assert sorted(row["record_ids"], key=record_order) == [i.header["id"] for i in items]


def test_http2_and_websocket_sessions_of_the_subject(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        ctx = ssl.create_default_context(cafile=str(bundle))
        transport = httpx.HTTPTransport(http2=True, verify=ctx)
        # httpx (and httpcore's tunnel) drop `local_address` when a proxy is set: give the
        # transport httpcore's proxy pool over a network backend that binds the subject's address
        transport._pool = httpcore.HTTPProxy(
            proxy_url=f"http://127.0.0.1:{proxy.port}", ssl_context=ctx, http1=True,
            http2=True, network_backend=_BoundBackend(SUBJECT_IP),
        )  # fmt: skip
        with httpx.Client(transport=transport, timeout=30) as client:
            r = client.post(upstream.url(f"/echo/h2?{SUBJECT_CANARY}"), content=b"h2-body-" * 1000)
            assert r.http_version == "HTTP/2" and r.status_code == 200
            h2_response = r.content
            r2 = client.get(upstream.url("/bytes/300000?seed=h2"))
            r2_sha = hashlib.sha256(r2.content).hexdigest()
            assert r2.headers["x-sha256"] == r2_sha

        async def ws_session() -> list[str | bytes]:
            ctx = ssl.create_default_context(cafile=str(bundle))
            got: list[str | bytes] = []
            async with connect(
                upstream.ws_url("/ws/chat"), ssl=ctx, proxy=f"http://127.0.0.1:{proxy.port}",
                proxy_ssl=None, local_addr=(SUBJECT_IP, 0),
            ) as ws:  # fmt: skip
                for message in ("hello " + SUBJECT_CANARY, b"\x00\xffbinary", "x" * 70_000):
                    await ws.send(message)
                    got.append(await ws.recv())
            return got

        echoed = asyncio.run(ws_session())
        assert echoed[1] == b"\x00\xffbinary"
    items = archive_items(lbm.data_dir, REF, env["identity"], keep=1 << 20)
    heads = [i.head for i in items if i.header["kind"] == rec.REQUEST_HEAD]
    authority = f"www.example.test:{upstream.https_port}"
    first = f"POST https://{authority}/echo/h2?{SUBJECT_CANARY} HTTP/2.0\r\n"
    assert heads[0].startswith(first.encode())
    second = f"GET https://{authority}/bytes/300000?seed=h2 HTTP/2.0\r\n"
    assert heads[1].startswith(second.encode())
    assert any(i.head.startswith(b"HTTP/2.0 200 \r\n") for i in items)
    bodies = [i for i in items if i.header["kind"] == rec.RESPONSE_BODY]
    assert bodies[0].head == h2_response
    second_ids = {i.header["id"] for i in bodies[1:]}
    assert body_sha256(lbm.data_dir, REF, env["identity"], second_ids) == (r2_sha, 300_000)
    # WebSocket: the upgrade, then one record per message each way, then the end
    ws = [(i.header["kind"], i.head) for i in items if i.header["kind"].startswith("websocket")]
    assert ws == [
        ("websocket-client-text", f"hello {SUBJECT_CANARY}".encode()),
        ("websocket-server-text", f"hello {SUBJECT_CANARY}".encode()),
        ("websocket-client-binary", b"\x00\xffbinary"),
        ("websocket-server-binary", b"\x00\xffbinary"),
        ("websocket-client-text", b"x" * 70_000),
        ("websocket-server-text", b"x" * 70_000),
        (rec.WEBSOCKET_END, ws[-1][1]),
    ]
    assert json.loads(ws[-1][1])["close_code"] == 1000
    upgrade = [i.head for i in items if i.head.startswith(b"HTTP/1.1 101 ")]
    assert upgrade, "the 101 Switching Protocols head is archived"


def test_non_subject_traffic_reaches_no_archive(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        for url in (upstream.url(f"/echo/{OTHER_CANARY}"), upstream.url(f"/x/{OTHER_CANARY}",
                                                                          tls=False)):  # fmt: skip
            got = curl(proxy, bundle, OTHER_IP, "-H", f"Cookie: c={OTHER_CANARY}",
                       "--data-binary", OTHER_CANARY, url)  # fmt: skip
            assert got.returncode == 0, got.stderr
        got = curl(proxy, bundle, SUBJECT_IP, upstream.url("/echo/subject"))
        assert got.returncode == 0, got.stderr
        output = proxy.output()
    items = archive_items(lbm.data_dir, REF, env["identity"])
    assert items and not any(OTHER_CANARY.encode() in i.head for i in items)
    assert [p.name for p in (lbm.data_dir / "archive").iterdir()] == [REF]
    assert files_containing(lbm.data_dir, OTHER_CANARY.encode()) == []
    assert OTHER_CANARY not in output
    rows = web_rows(lbm.data_dir)
    others = [r for r in rows if r["principal"] != SUBJECT]
    assert others and all(r["refs"] == [] and r["record_ids"] == [] for r in others)

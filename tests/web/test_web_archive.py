"""A subject's web sessions through the real `lbm proxy run`, decrypted with the investigator's
identity: HTTP/1.1 (curl), HTTP/2 (httpx) and WebSocket (websockets), byte-exact, with the
metadata rows naming exactly the records; a non-subject's traffic reaches no archive.

Everything real: `lbm init`, identity import, investigator, `lbm auth grant`, the daemon, the
hypercorn upstream over TLS with a test CA (tests/support/web_upstream.py), real clients
binding the subject's (127.0.0.2) or the non-subject's (127.0.0.3) address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import subprocess
import time
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
    wait_for,
    web_rows,
)
from web_proxy import set_option
from web_upstream import Upstream, sha256_of
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
    up = [i.head for i in items if i.header["kind"] == rec.REQUEST_BODY]
    assert up == [b"h2-body-" * 1000]  # the HTTP/2 request body, streamed from DATA frames
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


def test_subject_proxy_password_never_reaches_the_archive(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    """With proxy authentication, the subject's password (and its Basic encoding) is in no
    record and in no file of the data dir, for plain HTTP (credentials on every request) and
    HTTPS (credentials on the CONNECT), while the sessions themselves are archived."""
    password = "PROXY-PW-CANARY-8c2e7a"
    token = base64.b64encode(f"jsmith:{password}".encode())
    feed = env["tmp"] / "usernames.csv"
    feed.write_text(f"principal,kind,value,valid_from,valid_to\n{SUBJECT},username,jsmith,,\n")
    lbm("identity", "import", str(feed), check=True)
    lbm("users", "add", "jsmith", "--password-stdin", input=password + "\n", check=True)
    set_option(lbm.data_dir, "web", "auth", "true")
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        for url in (upstream.url("/echo/tls"), upstream.url("/echo/plain", tls=False)):
            got = curl(proxy, bundle, OTHER_IP, "--proxy-user", f"jsmith:{password}", url)
            assert got.returncode == 0, got.stderr
            assert password not in got.stdout.decode()  # nor forwarded upstream
    items = archive_items(lbm.data_dir, REF, env["identity"], keep=1 << 20)
    heads = [i.head for i in items if i.header["kind"] == rec.REQUEST_HEAD]
    assert len(heads) == 2 and any(b"/echo/plain" in h for h in heads)
    for item in items:
        assert password.encode() not in item.head and token not in item.head
    assert files_containing(lbm.data_dir, password.encode()) == []
    assert files_containing(lbm.data_dir, token) == []


def test_a_slow_stream_reaches_the_archive_while_it_runs(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    """A response that trickles (one small piece, then a long pause) is archived within seconds,
    before the response ends: the segment's plaintext index (no key needed) lists the body
    record while curl is still waiting."""
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        url = upstream.url("/slow?chunks=2&interval=8&size=100")
        cmd = ["curl", "-sS", "--proxy", f"http://127.0.0.1:{proxy.port}", "--interface",
               SUBJECT_IP, "--cacert", str(bundle), "-o", "/dev/null", url]  # fmt: skip
        client = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        try:

            def body_indexed() -> bool:
                for index in (lbm.data_dir / "archive" / REF).glob("*.index.jsonl"):
                    for line in index.read_text().splitlines():
                        if json.loads(line)["kind"] == rec.RESPONSE_BODY:
                            return True
                return False

            started = time.monotonic()
            assert wait_for(body_indexed, timeout=6.0)
            assert client.poll() is None, "the response was still streaming"
            assert time.monotonic() - started < 6.5
            assert client.wait(timeout=30) == 0
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()
    items = archive_items(lbm.data_dir, REF, env["identity"])
    bodies = [i for i in items if i.header["kind"] == rec.RESPONSE_BODY]
    assert [i.head for i in bodies] == [b"s" * 100, b"s" * 100]


def test_concurrent_flows_interleave_in_the_archive_and_each_row_names_its_own_records(
    lbm: Lbm, env: dict[str, Any], upstream: Upstream
) -> None:
    """Six downloads at once (HTTP/1.1 and HTTP/2 connections): their records interleave in
    shared segments, and each row's record ids give back exactly its own body."""
    size = 2_500_000
    seeds = [f"c{n}" for n in range(6)]
    with ProxyDaemon(lbm, env["logs"]) as proxy:
        bundle = client_bundle(lbm.data_dir, upstream, env["tmp"] / "bundle.pem")
        procs = []
        for n, seed in enumerate(seeds):
            cmd = ["curl", "-sS", "--proxy", f"http://127.0.0.1:{proxy.port}", "--interface",
                   SUBJECT_IP, "--cacert", str(bundle), "--limit-rate", "2M",
                   "--http1.1" if n % 2 else "--http2", "-o", str(env["tmp"] / seed),
                   upstream.url(f"/bytes/{size}?seed={seed}")]  # fmt: skip
            procs.append(subprocess.Popen(cmd))
        assert [p.wait(timeout=120) for p in procs] == [0] * len(seeds)
    expected = {sha256_of(size, seed) for seed in seeds}
    items = archive_items(lbm.data_dir, REF, env["identity"], keep=0)
    kind_of = {i.header["id"]: i.header["kind"] for i in items}
    rows = [r for r in web_rows(lbm.data_dir) if r["refs"] == [REF]]
    assert len(rows) == len(seeds)
    got = set()
    for row in rows:
        ids = {r for r in row["record_ids"] if kind_of[r] == rec.RESPONSE_BODY}
        got.add(body_sha256(lbm.data_dir, REF, env["identity"], ids))
    assert got == {(digest, size) for digest in expected}
    # they did interleave: some flow's body records are not contiguous in record order
    order = [i.header["id"] for i in items]
    spans = [
        sorted(order.index(r) for r in row["record_ids"] if kind_of[r] == rec.RESPONSE_BODY)
        for row in rows
    ]
    assert any(s[-1] - s[0] + 1 > len(s) for s in spans)

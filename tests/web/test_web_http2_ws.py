"""HTTP/2 and WebSocket through `lbm proxy run` for a non-subject, while a subject holds a web
grant on the same gateway (so the archive is live): the client talks to the real upstream (its
own certificate, ALPN h2, exact bytes both ways), the proxy writes one `passed` row per tunnel
with the SNI and no refs, and nothing of the session reaches the archive or any file under the
data dir."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from lbm_testing import Lbm
from web_proxy import OTHER, REF, SUBJECT, ProxyDaemon, investigator, lease
from web_upstream import Upstream, deterministic_bytes, sha256_of

Start = Callable[..., ProxyDaemon]
CANARY = "CANARY-h2ws-7f3a9c"
# httpx drops `local_address` when given a proxy, so here the non-subject is the default
# source address and the subject leases another loopback address
OTHER_IP, SUBJECT_IP = "127.0.0.1", "127.0.0.3"


def _daemon(start_proxy: Start, web_lbm: Lbm, tmp_path: Path) -> ProxyDaemon:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    return start_proxy()


def _upstream_only(upstream: Upstream) -> ssl.SSLContext:
    """Trusts the upstream's CA only: an intercepted connection (our CA) would fail."""
    return ssl.create_default_context(cafile=str(upstream.ca_file))


def _peer_sha256(response: httpx.Response) -> str:
    stream: Any = response.extensions["network_stream"]
    tls = stream.get_extra_info("ssl_object")
    assert tls is not None, "no TLS object on the client's stream"
    der = tls.getpeercert(True)
    return hashlib.sha256(der).hexdigest()


def _files_containing(root: Path, token: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and token in p.read_bytes()]


def _nothing_archived(data_dir: Path) -> bool:
    archive = data_dir / "archive"
    return not archive.exists() or not list(archive.rglob("*.age"))


def test_http2_non_subject_passes_through_with_exact_bytes(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    daemon = _daemon(start_proxy, web_lbm, tmp_path)
    n = 5 * 1024 * 1024 + 3
    body = b"".join(deterministic_bytes(1_000_000, "h2up")) + CANARY.encode()
    transport = httpx.HTTPTransport(
        http2=True,
        proxy=daemon.proxy,
        verify=_upstream_only(upstream),
    )
    with httpx.Client(transport=transport, timeout=30) as client:
        with client.stream("GET", upstream.url(f"/bytes/{n}?seed={CANARY}")) as down:
            peer = _peer_sha256(down)
            down.read()
        up = client.post(upstream.url(f"/upload?{CANARY}=1"), content=body)
        echo = client.post(
            upstream.url(f"/echo/{CANARY}"),
            content=CANARY,
            headers={"x-canary": CANARY, "cookie": f"c={CANARY}"},
        )
    assert (down.http_version, up.http_version, echo.http_version) == ("HTTP/2",) * 3
    assert down.status_code == 200
    assert hashlib.sha256(down.content).hexdigest() == sha256_of(n, CANARY)
    assert up.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    seen = echo.json()
    assert seen["http_version"] == "2" and seen["body"] == CANARY
    assert dict(seen["headers"])["x-canary"] == CANARY  # the upstream got the request as sent
    # the client saw the upstream's own certificate, not the interception CA's
    assert peer == upstream.leaf_sha256

    code, out, err = daemon.stop()
    assert code == 0, err
    rows = [r for r in daemon.rows() if r["principal"] == OTHER]
    # one kept-alive HTTP/2 connection carried the three requests: one tunnel row
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["decision"] == "passed" and row["method"] == "CONNECT"
    assert row["refs"] == [] and row["record_ids"] == []
    assert row["server_name"] == "www.example.test"
    assert row["client_ip"] == OTHER_IP and row["server_port"] == upstream.https_port
    assert row["bytes_down"] > n and row["bytes_up"] > len(body)
    assert _nothing_archived(web_lbm.data_dir)
    assert not _files_containing(web_lbm.data_dir, CANARY.encode())
    assert CANARY not in out + err


def test_websocket_non_subject_wss_and_ws(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    from websockets.sync.client import connect

    daemon = _daemon(start_proxy, web_lbm, tmp_path)
    binary = b"\x00\xff" + CANARY.encode() + bytes(range(256))
    with connect(
        upstream.ws_url(f"/ws/{CANARY}"),
        proxy=daemon.proxy,
        ssl=_upstream_only(upstream),
        open_timeout=15,
    ) as ws:
        ws.send(f"text {CANARY}")
        assert ws.recv(timeout=10) == f"text {CANARY}"
        ws.send(binary)
        assert ws.recv(timeout=10) == binary
        for i in range(50):
            ws.send(f"{i} {CANARY}")
            assert ws.recv(timeout=10) == f"{i} {CANARY}"
    # plain ws:// through the explicit proxy (websockets opens a CONNECT tunnel for it too)
    with connect(
        upstream.ws_url(f"/ws/{CANARY}", tls=False),
        proxy=daemon.proxy,
        open_timeout=15,
    ) as ws:
        ws.send(f"plain {CANARY}")
        assert ws.recv(timeout=10) == f"plain {CANARY}"
        ws.send(binary)
        assert ws.recv(timeout=10) == binary

    code, out, err = daemon.stop()
    assert code == 0, err
    rows = [r for r in daemon.rows() if r["principal"] == OTHER]
    assert rows
    for row in rows:
        assert row["refs"] == [] and row["record_ids"] == []
        assert row["client_ip"] == OTHER_IP
    tls_rows = [r for r in rows if r["server_name"] == "www.example.test"]
    assert len(tls_rows) == 1 and tls_rows[0]["decision"] == "passed"
    assert tls_rows[0]["bytes_up"] > 50 * len(CANARY)
    assert _nothing_archived(web_lbm.data_dir)
    assert not _files_containing(web_lbm.data_dir, CANARY.encode())
    assert CANARY not in out + err

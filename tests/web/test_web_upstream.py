"""The web tests' upstream (tests/support/web_upstream.py) does what the other tests rely on:
exact deterministic bytes with their digest, upload digests, an echo of the request as seen,
WebSocket echo, HTTP/2 by ALPN, and a leaf certificate from the test CA for every name."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web_upstream import (
    DO_NOT_DECRYPT_NAME,
    NAMES,
    TestCA,
    Upstream,
    der_fingerprint,
    deterministic_bytes,
    sha256_of,
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with Upstream(tmp_path_factory.mktemp("upstream")) as up:
        yield up


def _curl(up: Upstream, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(up.ca_file), *up.curl_resolve(), *args],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_deterministic_bytes_are_exact_and_chunks_differ() -> None:
    data = b"".join(deterministic_bytes(200_000, "a"))
    assert len(data) == 200_000
    assert hashlib.sha256(data).hexdigest() == sha256_of(200_000, "a")
    assert data == b"".join(deterministic_bytes(200_000, "a"))
    assert data != b"".join(deterministic_bytes(200_000, "b"))
    # a repeated chunk would pass a length check: the chunk index makes each one distinct
    assert data[: 64 * 1024] != data[64 * 1024 : 128 * 1024]
    assert b"".join(deterministic_bytes(0, "a")) == b""
    with pytest.raises(ValueError, match="n must be >= 0"):
        list(deterministic_bytes(-1))


def test_bytes_endpoint_streams_the_announced_digest_over_http2(upstream: Upstream) -> None:
    n = 3 * 1024 * 1024 + 17
    with httpx.Client(
        http2=True, verify=ssl.create_default_context(cafile=str(upstream.ca_file))
    ) as client:
        # httpx cannot --resolve: the IP SAN lets us reach the TLS port by address
        response = client.get(f"https://127.0.0.1:{upstream.https_port}/bytes/{n}?seed=s1")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.headers["x-sha256"] == sha256_of(n, "s1")
    assert hashlib.sha256(response.content).hexdigest() == sha256_of(n, "s1")


def test_bytes_endpoint_over_plain_http_and_bad_length(upstream: Upstream, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _curl(upstream, "-o", str(out), upstream.url("/bytes/100000?seed=7", tls=False))
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256_of(100_000, "7")
    bad = _curl(upstream, "-o", "/dev/null", upstream.url("/bytes/-5", tls=False))
    assert bad.returncode == 22  # --fail: HTTP 400


def test_upload_answers_length_and_digest(upstream: Upstream, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"".join(deterministic_bytes(2_000_000, "up")))
    done = _curl(upstream, "--data-binary", f"@{body}", upstream.url("/upload"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"length": 2_000_000, "sha256": sha256_of(2_000_000, "up")}


def test_echo_returns_the_request_as_seen(upstream: Upstream) -> None:
    done = _curl(
        upstream,
        "-H",
        "X-Canary: tok-header",
        "-b",
        "c=tok-cookie",
        "--data-binary",
        "tok-body",
        upstream.url("/echo/tok-path?q=tok-query", host="other.example.test"),
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo/tok-path?q=tok-query"
    headers = dict(seen["headers"])
    assert headers["x-canary"] == "tok-header"
    assert headers["cookie"] == "c=tok-cookie"
    assert headers["host"] == f"other.example.test:{upstream.https_port}"
    assert seen["body"] == "tok-body"
    assert seen["scheme"] == "https"


def test_leaf_certificate_covers_every_name_and_fingerprint_matches(upstream: Upstream) -> None:
    assert DO_NOT_DECRYPT_NAME in NAMES
    for name in NAMES:
        done = _curl(upstream, "-o", "/dev/null", upstream.url("/status/204", host=name))
        assert done.returncode == 0, (name, done.stderr)
    context = ssl.create_default_context(cafile=str(upstream.ca_file))
    raw = socket.create_connection(("127.0.0.1", upstream.https_port), timeout=10)
    with context.wrap_socket(raw, server_hostname="www.example.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    assert der_fingerprint(der) == upstream.leaf_sha256
    assert upstream.leaf_sha256 == TestCA.fingerprint(upstream.cert_file)


def test_unknown_name_is_refused_by_verification(upstream: Upstream) -> None:
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(upstream.ca_file),
            "--resolve",
            f"evil.example.test:{upstream.https_port}:127.0.0.1",
            f"https://evil.example.test:{upstream.https_port}/status/204",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 60  # certificate does not match the name


def test_websocket_echo_text_and_binary(upstream: Upstream) -> None:
    from websockets.sync.client import connect

    context = ssl.create_default_context(cafile=str(upstream.ca_file))
    url = f"wss://127.0.0.1:{upstream.https_port}/ws"
    with connect(url, ssl=context, open_timeout=10) as ws:
        ws.send("hello text")
        assert ws.recv(timeout=10) == "hello text"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=10) == b"\x00\x01binary\xff"
    with connect(f"ws://127.0.0.1:{upstream.http_port}/ws", open_timeout=10) as ws:
        ws.send("plain")
        assert ws.recv(timeout=10) == "plain"


def test_stop_closes_the_ports(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    with up:
        port = up.http_port
        assert httpx.get(f"http://127.0.0.1:{port}/status/204").status_code == 204
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/status/204", timeout=5)

"""Bad input through `lbm proxy run`: malformed requests, an invalid Host, absurd headers, a slow
client, too many connections, upstream TLS failure, connection refused, DNS failure. Each gets
the right HTTP error or a close, a row with `error_kind`, and the proxy keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from lbm_testing import Lbm
from web_proxy import (
    OTHER,
    OTHER_IP,
    REF,
    SUBJECT,
    SUBJECT_IP,
    ProxyDaemon,
    curl,
    investigator,
    lease,
    proxy_ca,
    set_option,
)
from web_upstream import TestCA, Upstream

Start = Callable[..., ProxyDaemon]


def _raw(daemon: ProxyDaemon, data: bytes, wait: float = 5) -> bytes:
    """Send `data` from the non-subject's address and read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=wait,
                                  source_address=(OTHER_IP, 0)) as s:  # fmt: skip
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def _still_serving(daemon: ProxyDaemon, up: Upstream) -> None:
    r = curl(daemon, up.url("/bytes/10", tls=False), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"200", r.stderr


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_malformed_requests_get_400_431_or_502_and_rows(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm
) -> None:
    daemon = start_proxy()
    host = f"www.example.test:{upstream.http_port}"
    bad_line = _raw(daemon, b"THIS IS NOT HTTP\r\n\r\n")
    assert _status(bad_line) == 400
    _still_serving(daemon, upstream)
    head = f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nno colon here\r\n\r\n"
    bad_header = _raw(daemon, head.encode())
    assert _status(bad_header) == 400
    bad_host = _raw(daemon, b"GET / HTTP/1.1\r\nHost: bad host\x01name\r\n\r\n")
    assert _status(bad_host) == 400
    huge = _raw(daemon, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode()
                + b"a" * 200_000 + b"\r\n\r\n")  # fmt: skip
    assert _status(huge) == 431
    _still_serving(daemon, upstream)
    refused = curl(daemon, "http://www.example.test:1/", "-o", "/dev/null", "-w", "%{http_code}")
    assert refused.stdout == b"502"
    dns = curl(daemon, "http://no-such-host.invalid/", "-o", "/dev/null", "-w", "%{http_code}")
    assert dns.stdout == b"502"
    tunnel_refused = curl(daemon, "https://www.example.test:1/", "--cacert", str(upstream.ca_file))
    assert tunnel_refused.returncode != 0
    _still_serving(daemon, upstream)
    code, _, err = daemon.stop()
    assert code == 0, err
    kinds = [r["error_kind"] for r in daemon.rows()]
    assert kinds.count("bad_request") >= 3, kinds
    assert "header_too_large" in kinds
    assert kinds.count("upstream_refused") >= 2 and "dns_failed" in kinds
    assert sum(1 for k in kinds if k is None) >= 3  # the good requests


def test_slow_and_greedy_clients_are_cut_off(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm
) -> None:
    set_option(web_lbm.data_dir, "web", "header_timeout_seconds", "2")
    set_option(web_lbm.data_dir, "web", "max_connections_per_client", "3")
    daemon = start_proxy()
    # slowloris: a header line every 0.5 s, never finishing the head
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10,
                                  source_address=(OTHER_IP, 0)) as s:  # fmt: skip
        s.sendall(b"GET http://www.example.test/ HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        for i in range(40):
            try:
                s.sendall(f"X-{i}: y\r\n".encode())
                time.sleep(0.25)
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed and time.monotonic() - started < 6, "slow client not cut off"
    # too many connections from one client: the fourth is closed at once
    held = [socket.create_connection(("127.0.0.1", daemon.port), source_address=(OTHER_IP, 0))
            for _ in range(3)]  # fmt: skip
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", daemon.port), timeout=5,
                                     source_address=(OTHER_IP, 0))  # fmt: skip
    assert extra.recv(1) == b""
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.3)
    _still_serving(daemon, upstream)
    daemon.stop()
    kinds = [r["error_kind"] for r in daemon.rows()]
    assert "timeout" in kinds and "too_many_connections" in kinds, kinds


def test_upstream_tls_failure_for_a_subject_is_502_and_a_row(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    # a second upstream whose CA the proxy does not trust
    with Upstream(tmp_path / "untrusted", ca=TestCA(tmp_path / "other-ca")) as bad:
        daemon = start_proxy()
        ca = proxy_ca(web_lbm.data_dir)
        r = curl(daemon, bad.url("/bytes/10"), "-o", "/dev/null", "-w", "%{http_code}",
                 source_ip=SUBJECT_IP, cacert=ca)  # fmt: skip
        assert r.stdout == b"502", r.stderr
        ok = curl(daemon, upstream.url("/bytes/10"), "-o", "/dev/null", "-w", "%{http_code}",
                  source_ip=SUBJECT_IP, cacert=ca)  # fmt: skip
        assert ok.stdout == b"200", ok.stderr
        daemon.stop()
    rows = [r for r in daemon.rows() if r["principal"] == SUBJECT]
    failed = [r for r in rows if r["port"] == bad.https_port or r["server_port"] == bad.https_port]
    assert failed and all(r["error_kind"] == "upstream_tls_failed" for r in failed), rows
    assert all(r["record_ids"] == [] for r in failed) or all(r["refs"] for r in failed)

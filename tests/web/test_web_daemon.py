"""`lbm proxy run` as a daemon: readiness, a non-subject passed through unopened, a subject
intercepted, orderly SIGTERM (port refuses afterwards, exit 0, rows durable)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
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
    records,
    tunnel_cert_sha256,
)
from web_upstream import Upstream, sha256_of

Start = Callable[..., ProxyDaemon]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_starts_serves_and_stops_cleanly(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm
) -> None:
    daemon = start_proxy()
    run = web_lbm.data_dir / "run"
    assert int((run / "proxy.ready").read_text()) == daemon.proc.pid
    r = curl(daemon, upstream.url("/bytes/5000?seed=a", tls=False), "-o", "/dev/null",
             "-w", "%{http_code}")  # fmt: skip
    assert r.stdout == b"200", r.stderr
    code, _out, err = daemon.stop()
    assert code == 0, err
    assert _refused(daemon.port), "the proxy port still accepts connections after SIGTERM"
    assert not (run / "proxy.ready").exists() and not (run / "proxy.port").exists()
    rows = daemon.rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["host"] == "www.example.test" and row["method"] == "GET"
    assert row["status"] == 200 and row["bytes_down"] == 5000
    assert row["refs"] == [] and row["record_ids"] == [] and row["principal"] is None
    assert row["client_ip"] == OTHER_IP and row["scheme"] == "http"


def test_non_subject_sees_the_real_certificate_and_a_passed_row(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    seen = tunnel_cert_sha256(daemon, "www.example.test", upstream.https_port, upstream.ca_file)
    assert seen == upstream.leaf_sha256
    r = curl(daemon, upstream.url("/bytes/100000?seed=b"), "-o", "/dev/null", "-w",
             "%{http_code}", cacert=upstream.ca_file)  # fmt: skip
    assert r.stdout == b"200", r.stderr
    daemon.stop()
    rows = [r for r in daemon.rows() if r["decision"] == "passed"]
    assert len(rows) == 2
    for row in rows:
        assert row["principal"] == OTHER and row["refs"] == []
        assert row["server_name"] == "www.example.test" and row["method"] == "CONNECT"
        assert row["server_ip"] == "127.0.0.1" and row["server_port"] == upstream.https_port
    big = max(rows, key=lambda r: r["bytes_down"])
    assert big["bytes_down"] > 100000 and big["bytes_up"] > 0
    assert not (web_lbm.data_dir / "archive" / REF).exists() or not list(
        (web_lbm.data_dir / "archive" / REF).glob("*.age")
    )


def test_subject_is_intercepted_and_archived(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    identity = investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    seen = tunnel_cert_sha256(daemon, "www.example.test", upstream.https_port, ca, SUBJECT_IP)
    assert seen != upstream.leaf_sha256
    r = curl(daemon, upstream.url("/bytes/200000?seed=c"), "-o", str(tmp_path / "got"),
             "-w", "%{http_code}", source_ip=SUBJECT_IP, cacert=ca)  # fmt: skip
    assert r.stdout == b"200", r.stderr
    code, _, err = daemon.stop()
    assert code == 0, err
    rows = [r for r in daemon.rows() if r["method"] == "GET"]
    assert len(rows) == 1
    row = rows[0]
    assert row["decision"] == "intercepted" and row["refs"] == [REF]
    assert row["principal"] == SUBJECT and row["status"] == 200
    assert row["bytes_down"] == 200000 and row["record_ids"]
    recs = records(web_lbm.data_dir, identity)
    body = b"".join(r.data for r in recs if "body" in r.header["kind"] and "response" in
                    r.header["kind"])  # fmt: skip
    import hashlib

    assert hashlib.sha256(body).hexdigest() == sha256_of(200000, "c")
    assert {r.header["id"] for r in recs} >= set(row["record_ids"])


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_zero(start_proxy: Start, signame: str) -> None:
    import signal as sig

    daemon = start_proxy()
    daemon.proc.send_signal(getattr(sig, signame))
    code, _out, err = daemon.stop()
    assert code == 0, err
    assert _refused(daemon.port)
    _ = json, time

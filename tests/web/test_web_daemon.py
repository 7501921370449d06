"""`lbm proxy run` as a daemon: readiness, a non-subject passed through unopened, a subject
intercepted, orderly SIGTERM (port refuses afterwards, exit 0, rows durable)."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
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
    time.sleep(0.3)
    if daemon.proc.poll() is None:  # a second signal during the orderly stop changes nothing
        daemon.proc.send_signal(getattr(sig, signame))
    code, _out, err = daemon.stop()
    assert code == 0, err
    assert _refused(daemon.port)
    _ = json, time


def test_sigterm_under_load_loses_no_accepted_row(start_proxy: Start, upstream: Upstream) -> None:
    """Every request whose client got its whole answer has its row after SIGTERM."""
    import subprocess
    import threading

    daemon = start_proxy()
    done: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            path = "/slow?chunks=8&interval=0.2&size=64" if i % 3 == 0 else "/bytes/2048"
            r = subprocess.run(
                ["curl", "-sS", "--proxy", daemon.proxy, "--interface", OTHER_IP, "-o",
                 "/dev/null", "-w", "%{http_code} %{local_port} %{size_download}",
                 "--max-time", "20", upstream.url(path, tls=False)],
                capture_output=True, text=True,
            )  # fmt: skip
            code, port, size = ([*r.stdout.split(), "", "", ""])[:3]
            if r.returncode == 0 and code == "200":
                done.append((int(port), size))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(3)
    daemon.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    code, _out, err = daemon.stop()
    assert code == 0, err
    assert len(done) > 20
    # a client port can come back for a later request (the proxy closes first, so the client
    # keeps no TIME_WAIT): each completed request needs a row of its own, port and size
    rows = Counter((r["client_port"], r["bytes_down"]) for r in daemon.rows() if r["status"] == 200)
    missing = Counter((port, int(size)) for port, size in done) - rows
    assert not missing, f"{missing.total()} completed requests have no row: {dict(missing)}"


def test_lbm_run_on_the_init_config_serves_a_working_proxy(
    web_lbm: Lbm, upstream: Upstream
) -> None:
    """README's main job: `lbm init && lbm run`, then `curl -x` works at once."""
    import signal as sig
    import subprocess
    import sys

    from lbm_testing import REPO

    assert "enabled = true" in (web_lbm.data_dir / "lbm.toml").read_text().split("[web]")[1][:200]
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(web_lbm.data_dir), "run"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = web_lbm.data_dir / "run" / "proxy.ready"
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "proxy never ready"
            time.sleep(0.1)
        port = int((web_lbm.data_dir / "run" / "proxy.port").read_text())
        r = subprocess.run(
            ["curl", "-sS", "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w",
             "%{http_code}", upstream.url("/bytes/10", tls=False)],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert r.stdout == b"200", r.stderr
        proc.send_signal(sig.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "proxy stopped (exit 0)" in err

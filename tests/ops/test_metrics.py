"""appliance.counters and the metrics server, in process (the running daemons are covered by
tests/ops/test_sighup.py): labels never carry identifiers, the status and .prom files, the
systemd watchdog over a real datagram socket, and `/metrics` merging every daemon's file while
leaving out a daemon that is no longer running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lbm_testing import Lbm
from prometheus_client.parser import text_string_to_metric_families

from appliance.cli.metrics_server import make_server, parse_listen, render
from appliance.counters import Counters, StatusWriter

IDENTIFIERS = ("10.1.2.3", "CA1-2026-0042", "mail.example.org", "p12345@force.example", "fe80::1")


def test_label_values_never_carry_an_address_ref_or_host() -> None:
    c = Counters("smtp")
    kinds = {name: 1 for name in IDENTIFIERS} | {"delivered": 5, "p12345": 2}
    c.counter("smtp_delivery", "outcomes", lambda: kinds, label="outcome")
    text = c.render().decode()
    for ident in IDENTIFIERS:
        assert ident not in text
    samples = {
        s.labels["outcome"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    # anything that is no code word is summed into "other", never shown
    assert samples["other"] == len(IDENTIFIERS) and samples["delivered"] == 5
    assert c.values()["smtp_delivery"]["other"] == len(IDENTIFIERS)
    with pytest.raises(ValueError, match="registered twice"):
        c.counter("smtp_delivery", "again", lambda: 0)
    with pytest.raises(ValueError, match="lower case"):
        c.gauge("Bad-Name", "x", lambda: 0)


def test_status_writer_files_last_error_and_stop(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gaps = [0]
    c = Counters("proxy")
    c.counter("archive_gaps", "gaps", lambda: gaps[0])
    w = StatusWriter(run, "proxy", c, interval=0.0, errors={"archive_gap": lambda: gaps[0]})
    w.port = 3128
    w.tick()
    status = json.loads((run / "proxy.status.json").read_text())
    assert (run / "proxy.status.json").stat().st_mode & 0o777 == 0o600
    assert (run / "proxy.prom").stat().st_mode & 0o777 == 0o600
    assert status["name"] == "proxy" and status["pid"] == os.getpid()
    assert status["port"] == 3128 and status["state"] == "running"
    assert status["last_error"] is None and status["counters"] == {"archive_gaps": 0}
    gaps[0] = 2
    w.tick()
    status = json.loads((run / "proxy.status.json").read_text())
    assert status["last_error"]["kind"] == "archive_gap"  # a kind, never a message
    assert status["counters"] == {"archive_gaps": 2}
    prom = (run / "proxy.prom").read_text()
    assert "lbm_archive_gaps_total 2.0" in prom
    w.close()
    assert json.loads((run / "proxy.status.json").read_text())["state"] == "stopped"
    assert not (run / "proxy.prom").exists()  # a stopped daemon's counters are not served


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.3)
    return sock


def test_watchdog_pings_only_when_systemd_asks_this_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = _notify_socket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    StatusWriter(tmp_path / "run", "smtp", Counters("smtp")).tick()
    assert sock.recv(64) == b"WATCHDOG=1"
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is another process's
    StatusWriter(tmp_path / "run", "smtp", Counters("smtp")).tick()
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.delenv("WATCHDOG_USEC")  # no watchdog configured
    StatusWriter(tmp_path / "run", "smtp", Counters("smtp")).tick()
    with pytest.raises(TimeoutError):
        sock.recv(64)
    sock.close()


def _daemon(run: Path, name: str, gaps: int) -> StatusWriter:
    c = Counters(name)
    c.counter("archive_gaps", "gaps", lambda: gaps)
    w = StatusWriter(run, name, c)
    w.write()
    return w


def test_metrics_endpoint_merges_daemons_and_leaves_out_a_dead_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _daemon(run, "proxy", 1)
    _daemon(run, "capture-eth0.100", 2)  # an interface name with a dot: still a code word
    _daemon(run, "smtp", 99)
    status = json.loads((run / "smtp.status.json").read_text())
    proc = subprocess.Popen(["true"])
    proc.wait()
    status["pid"] = proc.pid  # the relay has ended (its files remain)
    (run / "smtp.status.json").write_text(json.dumps(status))
    text = render(run).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # valid exposition
    assert text.count("# TYPE lbm_archive_gaps_total") == 1  # one family across daemons
    gaps = {s.labels["daemon"]: s.value for s in families["lbm_archive_gaps"].samples}
    assert gaps == {"proxy": 1.0, "capture_eth0_100": 2.0}  # the ended relay is not served
    up = {s.labels["daemon"]: s.value for s in families["lbm_daemon_up"].samples}
    assert up == {"proxy": 1.0, "capture_eth0_100": 1.0, "smtp": 0.0}

    server = make_server(run, "127.0.0.1", 0)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert r.read().decode() == render(run).decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_listen_is_loopback_only(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("0.0.0.0:9100", "10.0.0.5:9100", "metrics.example.org:9100", "127.0.0.1"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    result = Lbm(tmp_path / "data")("metrics", "serve", "--listen", "0.0.0.0:9100")
    assert result.returncode == 2
    assert result.stderr.startswith("lbm: error: --listen: [metrics] listen '0.0.0.0:9100'")
    assert "only a loopback address" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing made, nothing listening


def test_no_daemon_publishes_a_count_that_singles_out_subjects(tmp_path: Path) -> None:
    """The whole catalogue, built as the daemons build it: nothing that rises only while a
    subject is recorded (intercepted, archived records or bytes, the relay's archive events)."""
    from types import SimpleNamespace as NS

    from appliance.cli import daemon_metrics as dm
    from capture.summary import Summary

    archiver = NS(counts=NS(records=5, bytes=5000, gaps=1, gap_flows=1, audit_failures=1))
    identity = NS(counts=NS(by_ip=3, by_user=0, unresolved=1, auth_failed=0))
    proxy = dm.proxy_counters(
        mode="transparent", tally=dm.ConnectionTally(), rows=dm.RowTally(NS()),
        identity=identity, archiver=archiver, open_connections=lambda: 2,
    )  # fmt: skip
    events = {"accepted": 4, "archive_gap": 2, "audit_failed": 1, "relay_denied": 1}
    relay = dm.relay_counters(events=lambda: events, delivery=None, spool_dir=tmp_path)
    summary = Summary(packets=10, archived_packets=7, archive_errors=1)
    capture = dm.capture_counters("eth1", lambda: summary)
    text = b"".join(c.render() for c in (proxy, relay, capture)).decode()
    for word in ("intercept", "archived", "record", "audit_failed", 'archive_gap"'):
        assert word not in text, word
    assert "5000" not in text  # archived bytes
    gaps = [
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "lbm_archive_gaps"
        for s in f.samples
    ]
    assert gaps == [1.0, 2.0, 1.0]  # proxy, relay, capture: totals only

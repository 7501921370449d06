"""SIGHUP through `lbm run`: the supervisor passes it to every child, the proxy and the relay
reload their configuration (live options applied, the rest listed), the users file and the
identity map, without dropping an open connection; each reload is audited by key name only. A
configuration broken on disk is refused and the daemons keep serving. Then, on the same running
gateway, `lbm status` and the metrics endpoint (checked here to share one
`lbm run`): every daemon, and no identifier in any counter or status file.

One `lbm run` (proxy with `[web] auth`, relay, housekeeping, metrics) and one upstream serve the
whole module.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import REPO, Lbm
from prometheus_client.parser import text_string_to_metric_families
from web_proxy import set_option
from web_upstream import Upstream

FAST = {"LBM_BCRYPT_ROUNDS": "4"}
PASSWORD = "Horse-Battery-77"
CANARY_USER = "canaryuser7"  # a proxy user name: must never reach a counter or status file
DAEMONS = ("proxy", "smtp", "housekeeping", "metrics")


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


class Gateway:
    def __init__(self, lbm: Lbm, upstream: Upstream, proc: subprocess.Popen[bytes]) -> None:
        self.lbm = lbm
        self.upstream = upstream
        self.proc = proc
        self.run = lbm.data_dir / "run"
        self.logs: tuple[Path, Path] = (Path(), Path())

    def port(self, name: str) -> int:
        return int((self.run / f"{name}.port").read_text())

    def pids(self) -> dict[str, int]:
        return {n: json.loads((self.run / f"{n}.status.json").read_text())["pid"] for n in DAEMONS}

    def audit(self, action: str) -> list[dict[str, Any]]:
        lines = (self.lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["action"] == action]

    def hup(self, expect: int) -> list[dict[str, Any]]:
        """SIGHUP to `lbm run`; wait for `expect` new config_reload entries (proxy and relay)."""
        before = len(self.audit("config_reload"))
        self.proc.send_signal(signal.SIGHUP)
        wait_for(
            "config_reload audited", lambda: len(self.audit("config_reload")) >= before + expect
        )
        return self.audit("config_reload")[before:]

    def get(self, conn: http.client.HTTPConnection, user: str, path: str = "/bytes/10") -> int:
        token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
        conn.request(
            "GET",
            self.upstream.url(path, tls=False),
            headers={"Proxy-Authorization": f"Basic {token}"},
        )
        response = conn.getresponse()
        response.read()
        return response.status


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sighup")
    lbm = Lbm(tmp / "data")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    with Upstream(tmp / "upstream") as upstream:
        set_option(lbm.data_dir, "web", "upstream_ca_file", json.dumps(str(upstream.ca_file)))
        set_option(lbm.data_dir, "testing", "hosts", json.dumps(upstream.hosts_option()))
        set_option(lbm.data_dir, "web", "auth", "true")
        lbm("users", "add", "jsmith", "--password-stdin", input=PASSWORD + "\n", env=FAST,
            check=True)  # fmt: skip
        env = {**os.environ, **lbm.env, **FAST}
        env.pop("LBM_FAKE_NOW", None)
        with open(tmp / "run.out", "wb") as out, open(tmp / "run.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(lbm.data_dir),
                 "run"],
                cwd=REPO, env=env, stdout=out, stderr=err,
            )  # fmt: skip
        g = Gateway(lbm, upstream, proc)
        g.logs = (tmp / "run.out", tmp / "run.err")
        try:
            wait_for(
                "every daemon's status file",
                lambda: (
                    all((g.run / f"{n}.status.json").exists() for n in DAEMONS)
                    and all((g.run / f"{n}.port").exists() for n in ("proxy", "smtp", "metrics"))
                ),
                timeout=40,
            )
            yield g
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_sighup_reloads_without_dropping_a_connection_and_a_new_user_works(gw: Gateway) -> None:
    pids = gw.pids()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port("proxy"), timeout=20)
    assert gw.get(conn, "jsmith") == 200
    local = conn.sock.getsockname()
    # a user added after the proxy started, and options of both daemons changed on disk
    gw.lbm("users", "add", CANARY_USER, "--password-stdin", input=PASSWORD + "\n", env=FAST,
           check=True)  # fmt: skip
    set_option(gw.lbm.data_dir, "web", "max_connections_per_client", "100")
    set_option(gw.lbm.data_dir, "web", "listen_port", "1")  # not live: listed, not applied
    set_option(gw.lbm.data_dir, "smtp", "max_recipients", "1")
    entries = gw.hup(expect=2)
    by_daemon = {e["fields"]["daemon"]: e["fields"] for e in entries}
    assert by_daemon["proxy"]["ok"] is True
    assert by_daemon["proxy"]["changed"] == ["web.listen_port", "web.max_connections_per_client"]
    assert by_daemon["proxy"]["applied"] == ["web.max_connections_per_client"]
    assert by_daemon["proxy"]["restart_needed"] == ["web.listen_port"]
    assert by_daemon["smtp"]["applied"] == ["smtp.max_recipients"]  # its own sections only
    text = json.dumps([e["fields"] for e in entries])  # (hashes and signatures may hold "100")
    assert "100" not in text and PASSWORD not in text  # key names, never values
    # the open connection was not dropped: the same socket answers again
    assert gw.get(conn, "jsmith") == 200
    assert conn.sock is not None and conn.sock.getsockname() == local
    conn.close()
    # the new user authenticates (a fresh connection)
    fresh = http.client.HTTPConnection("127.0.0.1", gw.port("proxy"), timeout=20)
    assert gw.get(fresh, CANARY_USER) == 200
    fresh.close()
    # the relay applied its new limit: a second recipient is refused
    with smtplib.SMTP("127.0.0.1", gw.port("smtp"), timeout=20) as smtp:
        smtp.ehlo("client.force.example")
        assert smtp.mail("a@force.example")[0] == 250
        assert smtp.rcpt("b@example.org")[0] == 250
        assert smtp.rcpt("c@example.org")[0] == 452
    # lbm run passed SIGHUP on: every child still runs with the same pid (none restarted)
    assert gw.pids() == pids
    assert gw.proc.poll() is None


def test_broken_config_on_sighup_is_refused_and_daemons_keep_serving(gw: Gateway) -> None:
    config = gw.lbm.data_dir / "lbm.toml"
    good = config.read_text()
    try:
        config.write_text(good.replace("[web]", '[web]\nmax_header_bytes = "lots"', 1))
        entries = gw.hup(expect=2)
        assert {e["fields"]["daemon"] for e in entries} == {"proxy", "smtp"}
        assert all(e["fields"]["ok"] is False for e in entries)
        assert all("lots" not in json.dumps(e) for e in entries)
    finally:
        config.write_text(good)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port("proxy"), timeout=20)
    assert gw.get(conn, "jsmith") == 200
    conn.close()
    with smtplib.SMTP("127.0.0.1", gw.port("smtp"), timeout=20) as smtp:
        assert smtp.noop()[0] == 250


def test_status_and_metrics_show_every_daemon_and_no_identifier(gw: Gateway) -> None:
    for name in ("proxy", "smtp"):  # fresh counters after the traffic above
        path = gw.run / f"{name}.status.json"
        first = path.stat().st_mtime_ns
        wait_for(f"{name} status rewritten", lambda p=path, f=first: p.stat().st_mtime_ns != f)
    result = gw.lbm("status", "--json", check=True)
    data = json.loads(result.stdout)
    for name in DAEMONS:
        d = data["daemons"][name]
        assert d["running"] is True and isinstance(d["pid"], int) and d["uptime"] >= 0, name
    assert data["daemons"]["proxy"]["port"] == gw.port("proxy")
    assert data["daemons"]["smtp"]["port"] == gw.port("smtp")
    assert data["spool_depth"] >= 0 and data["writer_lag_seconds"] is not None
    assert data["policy_snapshot_age_seconds"] < 5
    counters = data["daemons"]["proxy"]["counters"]
    assert counters["web_requests"] >= 4 and counters["web_connections"]["explicit"] >= 3
    assert counters["web_identity"]["by_user"] >= 4
    body = urllib.request.urlopen(f"http://127.0.0.1:{gw.port('metrics')}/metrics", timeout=10)
    text = body.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["daemon"]: s.value for s in families["lbm_daemon_up"].samples}
    assert up == {"housekeeping": 1.0, "metrics": 1.0, "proxy": 1.0, "smtp": 1.0}
    requests = families["lbm_web_requests"].samples
    assert requests[0].labels == {"daemon": "proxy"} and requests[0].value >= 4
    events = {s.labels["kind"]: s.value for s in families["lbm_smtp_events"].samples}
    assert events.get("too_many_recipients") == 1
    # no user name, address, host name or password in anything an operator sees
    seen = text + "".join(p.read_text() for p in gw.run.glob("*.status.json"))
    seen += "".join(p.read_text() for p in gw.run.glob("*.prom")) + result.stdout
    for canary in (CANARY_USER, "jsmith", "127.0.0.1", "example.org", "example.test", PASSWORD):
        assert canary not in seen, canary
    for path in gw.run.glob("*.status.json"):
        assert path.stat().st_mode & 0o777 == 0o600


def test_daemon_logs_are_json_lines_without_identifiers(gw: Gateway) -> None:
    out, err = (p.read_text() for p in gw.logs)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    events = {(r["daemon"], r["event"]) for r in records}
    assert {("proxy", "listening"), ("smtp", "listening")} <= events
    assert {("proxy", "config_reload"), ("smtp", "config_reload")} <= events
    assert all({"ts", "level", "daemon", "event"} <= set(r) for r in records)
    for line in out.splitlines():  # lbm run's own summary is the only plain text
        assert line.startswith(("{", " ", "running on", "next:")), line
    for canary in (CANARY_USER, "jsmith", "example.org", "example.test", PASSWORD):
        assert canary not in out + err, canary

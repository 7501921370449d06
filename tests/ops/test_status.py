"""`lbm status` on a data dir with authorisations due (fake clock): counts without references for
the operator, references only with `--officer-view` (audited), the disk warning threshold, and
daemons known from their status files (a dead pid shows as stopped). The commands run in process
(click's runner: a subprocess costs 2 s here); one bad-config case runs the real CLI. The running
gateway's daemons and counters, through `lbm status` as a subprocess, are in test_sighup.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lbm_testing import Lbm, Result
from mail_relay import set_option

from appliance.cli import main as lbm_main
from appliance.config import ConfigError
from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths

T0 = "2026-03-10T09:30:00Z"
FORTY_DAYS_EARLIER = "2026-01-29T09:30:00Z"
INV1 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
STANDARD, URGENT = "CA1-2026-0101", "CA1-2026-0102"
SUBJECT = "p12345"


class InProcess(Lbm):
    """`Lbm` with every command run in this process through click's test runner."""

    def run(
        self,
        args: tuple[str, ...] | list[str],
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Result:
        argv = ["--data-dir", str(self.data_dir), *args]
        r = CliRunner().invoke(lbm_main.cli, argv, input=input, env=env)
        code, err = r.exit_code, r.stderr
        if isinstance(r.exception, ConfigError):  # as main() does
            code, err = 2, f"{err}lbm: error: {r.exception}\n"
        elif r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Result(code, r.stdout, err, err)


@pytest.fixture(scope="module")
def lbm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lbm]:
    runner = InProcess(tmp_path_factory.mktemp("status") / "data")
    runner("init", check=True)
    config = runner.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    conn = store_sqlite.connect(DataPaths(runner.data_dir).registry)
    inv_table.add(conn, "inv1", INV1, "p901", "2026-01-01T00:00:00Z")
    conn.close()
    # a month and more in force: its review is due; an urgent grant: 72 h, awaiting ratification
    runner.grant(STANDARD, SUBJECT, when=FORTY_DAYS_EARLIER)
    runner.grant(URGENT, SUBJECT, when=T0, command="urgent", officer="p300")
    yield runner


def status(lbm: Lbm, *args: str) -> tuple[dict[str, Any], str]:
    env = {"LBM_FAKE_NOW": T0}
    data = json.loads(lbm("status", "--json", *args, env=env, check=True).stdout)
    text = lbm("status", *args, env=env, check=True).stdout
    return data, text


def audit(lbm: Lbm, action: str) -> list[dict[str, Any]]:
    lines = (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


def test_operator_sees_counts_but_no_reference_or_subject(lbm: Lbm) -> None:
    data, text = status(lbm)
    assert data["authorisations"] == {
        "expiring_7d": 1,
        "review_due": 1,
        "awaiting_ratification": 1,
    }
    assert "1 expiring within 7 days, 1 review(s) due, 1 urgent awaiting ratification" in text
    for secret in (STANDARD, URGENT, SUBJECT):
        assert secret not in text and secret not in json.dumps(data)
    assert "authorisation_refs" not in data
    assert audit(lbm, "status_officer_view") == []
    # the allowed-signers line and the audit chain head are there, as before
    assert data["allowed_signers"].startswith(data["gateway"] + ' namespaces="lbm-evidence" ')
    assert data["audit_head"]["seq"] == data["audit_entries"] > 0
    assert len(data["audit_head"]["hash"]) == 64


def test_officer_view_shows_references_and_is_audited(lbm: Lbm) -> None:
    data, text = status(lbm, "--officer-view")
    assert data["authorisation_refs"] == {
        "expiring_7d": [URGENT],
        "review_due": [STANDARD],
        "awaiting_ratification": [URGENT],
    }
    assert STANDARD in text and URGENT in text
    views = audit(lbm, "status_officer_view")
    assert len(views) == 2  # one per call (json and text), each naming who looked
    assert views[-1]["actor"] == "root"
    assert views[-1]["refs"] == [STANDARD, URGENT]
    assert views[-1]["fields"]["counts"] == data["authorisations"]


def test_disk_warning_follows_the_configured_threshold(lbm: Lbm) -> None:
    try:
        set_option(lbm.data_dir, "metrics", "disk_warn_free_percent", "99")
        data, text = status(lbm)
        assert data["disk_warning"] is True and 0 <= data["disk_free_percent"] < 99
        assert "WARNING: below 99% ([metrics] disk_warn_free_percent)" in text
        set_option(lbm.data_dir, "metrics", "disk_warn_free_percent", "1")
        data, text = status(lbm)
        assert data["disk_warning"] is False and "WARNING" not in text
        set_option(lbm.data_dir, "metrics", "disk_warn_free_percent", "150")
        bad = Lbm(lbm.data_dir)("status")  # the real CLI: exit status and one line
        assert bad.returncode == 2
        assert "disk_warn_free_percent" in bad.stderr
    finally:
        set_option(lbm.data_dir, "metrics", "disk_warn_free_percent", "10")


def test_daemons_from_status_files_a_dead_pid_is_stopped(lbm: Lbm) -> None:
    run = lbm.data_dir / "run"
    data, text = status(lbm)
    assert data["writer_lag_seconds"] is None and "n/a (no daemon running)" in text
    run.mkdir(exist_ok=True)
    proc = subprocess.Popen(["true"])
    proc.wait()
    ended = {
        "name": "smtp", "pid": proc.pid, "port": 2525, "state": "running", "uptime": 50.0,
        "last_error": {"kind": "delivery_failed", "at": T0}, "counters": {},
    }  # fmt: skip
    counters = {"metadata_writer_lag_seconds": 0.25, "metadata_rows_refused": 3}
    live = {**ended, "name": "proxy", "pid": os.getpid(), "port": 3128, "last_error": None,
            "counters": counters}  # fmt: skip
    files = [run / "smtp.status.json", run / "proxy.status.json"]
    try:
        files[0].write_text(json.dumps(ended))
        files[1].write_text(json.dumps(live))
        data, text = status(lbm)
        assert data["daemons"]["smtp"]["running"] is False
        assert data["daemons"]["smtp"]["last_error"]["kind"] == "delivery_failed"
        assert data["daemons"]["proxy"]["running"] is True
        assert data["writer_lag_seconds"] == 0.25 and data["metadata_rows_refused"] == 3
        lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
        assert "stopped" in lines["smtp"] and "last error delivery_failed" in lines["smtp"]
        assert "running" in lines["proxy"] and "port 3128" in lines["proxy"]
    finally:
        for f in files:
            f.unlink(missing_ok=True)


def test_unreadable_status_file_is_not_an_error(lbm: Lbm, tmp_path: Path) -> None:
    run = lbm.data_dir / "run"
    run.mkdir(exist_ok=True)
    bad = run / "capture-eth1.status.json"
    try:
        bad.write_bytes(b"{half a file")
        data, _ = status(lbm)
        assert data["daemons"]["capture-eth1"]["running"] is False
    finally:
        bad.unlink()

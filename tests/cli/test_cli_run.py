"""`lbm run` supervises the enabled daemons as separate processes and stops them all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def start_run(lbm: Lbm) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(lbm.data_dir), "run"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_daemons_and_a_signal_stops_them_all(lbm: Lbm, sig: int) -> None:
    proc = start_run(lbm)
    ready = lbm.data_dir / "run" / "housekeeping.ready"
    # init's config enables the proxy and the relay too
    others = [lbm.data_dir / "run" / f"{name}.ready" for name in ("proxy", "smtp")]
    try:
        wait_for(lambda: ready.exists() and all(p.exists() for p in others), timeout=30)
        kids = children_of(proc.pid)
        assert kids, "lbm run started no daemon process"
        time.sleep(0.6)  # a supervision round or two: the summary follows readiness
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "housekeeping stopped (exit 0)" in err
    # what is running, and what to try next, once every daemon is ready
    assert f"running on {lbm.data_dir}" in out, out
    assert re.search(r"housekeeping +pid \d+ +ready", out), out
    assert re.search(r"proxy +pid \d+ +ready +port \d+", out), out
    assert re.search(r"smtp +pid \d+ +ready +port \d+", out), out
    assert "status" in out and "audit verify" in out and "Ctrl-C stops every daemon" in out
    for kid in kids:
        assert not alive(kid), f"daemon {kid} outlived lbm run"
    actions = [
        json.loads(x)["action"]
        for x in (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    # housekeeping and the relay audit their start and stop
    assert actions.count("daemon_start") == 2 and actions.count("daemon_stop") == 2
    assert not ready.exists()


def without_proxy(lbm: Lbm) -> None:
    """Turn off the proxy and the relay `lbm init` enables, leaving housekeeping the only
    daemon."""
    cfg = lbm.data_dir / "lbm.toml"
    text = cfg.read_text()
    for section, what in (("web", "the web proxy"), ("smtp", "the SMTP relay")):
        old = f"[{section}]\n# run {what} under `lbm run`\nenabled = true"
        assert old in text
        text = text.replace(old, f"[{section}]\nenabled = false")
    cfg.write_text(text)


def test_run_restarts_a_daemon_that_dies(lbm: Lbm) -> None:
    without_proxy(lbm)
    proc = start_run(lbm)
    ready = lbm.data_dir / "run" / "housekeeping.ready"
    try:
        wait_for(ready.exists)
        (first,) = children_of(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: bool(children_of(proc.pid)) and children_of(proc.pid) != [first])
        (second,) = children_of(proc.pid)
        assert second != first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "exited with status -9" in err
    assert proc.returncode == 0


def test_run_with_nothing_enabled_refuses(lbm: Lbm) -> None:
    without_proxy(lbm)
    cfg = lbm.data_dir / "lbm.toml"
    cfg.write_text(
        cfg.read_text().replace(
            "[housekeeping]\n# run the housekeeping daemon under `lbm run`\nenabled = true",
            "[housekeeping]\nenabled = false",
        )
    )
    result = lbm("run")
    assert result.returncode == 2
    assert "no daemon is enabled" in result.stderr


def test_a_second_run_on_the_same_data_dir_is_refused_and_a_killed_run_blocks_nobody(
    lbm: Lbm,
) -> None:
    proc = start_run(lbm)
    ready = lbm.data_dir / "run" / "housekeeping.ready"
    kids: list[int] = []
    try:
        wait_for(ready.exists)
        kids = children_of(proc.pid)
        second = lbm("run", timeout=30)
        assert second.returncode == 1
        assert f"already running, pid {proc.pid}" in second.stderr, second.stderr
        assert children_of(proc.pid) == kids  # nothing else started
        proc.kill()  # no clean-up: the lock file stays behind, its lock does not
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
    assert (lbm.data_dir / "run" / "lbm-run.lock").exists()
    again = start_run(lbm)
    try:
        wait_for(lambda: children_of(again.pid) != [])
        again.send_signal(signal.SIGTERM)
        _, err = again.communicate(timeout=20)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 0 and "already running" not in err, err

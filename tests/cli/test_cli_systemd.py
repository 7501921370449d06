"""`lbm init --system --root PREFIX` renders hardened units that systemd accepts, and their
command lines start and stop for real (systemd itself cannot run here: it is not PID 1)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)

GOALS = {"lbm-housekeeping.service": 2.0, "lbm-capture@.service": 3.0}


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    Lbm(tmp_path / "unused")(
        "init", "--system", "--root", str(root), "--user", "nobody", check=True
    )
    return root


def units(prefix: Path) -> dict[str, Path]:
    return {p.name: p for p in (prefix / "etc/systemd/system").glob("*.service")}


def test_units_verify_and_meet_exposure_goals(prefix: Path) -> None:
    found = units(prefix)
    assert set(GOALS) <= set(found)  # every unit: tests/deploy/test_units.py
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, found.values())],
        capture_output=True,
        text=True,
        cwd=prefix,
    )
    assert verify.returncode == 0, verify.stderr
    for name, goal in GOALS.items():
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(found[name])],
            capture_output=True,
            text=True,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
        assert match, out.stdout + out.stderr
        assert float(match.group(1)) <= goal, f"{name}: exposure {match.group(1)} > {goal}"
    text = found["lbm-housekeeping.service"].read_text()
    assert "--data-dir /var/lib/lbm --config /etc/lbm/lbm.toml housekeeping run" in text
    assert "ReadWritePaths=/var/lib/lbm" in text and "User=nobody" in text


def test_housekeeping_unit_command_line_starts_and_stops(prefix: Path) -> None:
    text = units(prefix)["lbm-housekeeping.service"].read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    argv = [
        a.replace("/var/lib/lbm", str(prefix / "var/lib/lbm")).replace(
            "/etc/lbm/lbm.toml", str(prefix / "etc/lbm/lbm.toml")
        )
        for a in shlex.split(line.removeprefix("ExecStart="))
    ]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    ready = prefix / "var/lib/lbm/run/housekeeping.ready"
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the unit's command line never became ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not ready.exists()

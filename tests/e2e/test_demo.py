"""`lbm demo` (issue 17, "A first look for a newcomer"): the real command in a subprocess, on
loopback. It shows the subject's traffic intercepted and archived and the other user's as
metadata only, keeps nothing of the other user's content, finishes within a minute, and leaves no
process running, also when interrupted with Ctrl-C while the appliance is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lbm_testing import REPO

from store.metadata import read_stream
from store.paths import DataPaths

pytestmark = pytest.mark.e2e


def _demo_argv(directory: Path) -> list[str]:
    return [sys.executable, "-m", "appliance.cli.main", "demo", "--dir", str(directory)]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LBM_")}


def _processes_naming(path: Path) -> list[str]:
    """Command lines of running processes that mention `path` (the demo's directory)."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {text}")
    return found


def test_demo_shows_both_users_keeps_only_the_subjects_content(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    started = time.monotonic()
    proc = subprocess.run(_demo_argv(root), capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=90)  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60, f"lbm demo took {elapsed:.0f} s"
    out = proc.stdout
    assert "a demo: [testing] switches on" in out
    # the subject's traffic intercepted (our CA) and archived; the other's passed (their CA)
    assert "alice  (127.0.0.2) GET" in out and "interception CA" in out
    assert "bob    (127.0.0.3) GET" in out and "certificate from: CN=lbm demo internet CA" in out
    table = [line for line in out.splitlines() if line.startswith("│") and line.count("│") == 3]
    assert len(table) >= 3, out
    alice = [line.split("│")[1] for line in table]
    bob = [line.split("│")[2] for line in table]
    assert any("intercepted www.example.test  demo-0001:" in cell for cell in alice)
    assert any("delivered to someone@elsewhere.example  demo-0001:" in cell for cell in alice)
    assert any("passed www.example.test  metadata only" in cell for cell in bob)
    assert all("demo-0001" not in cell for cell in bob)
    # decrypted from the bundle on the "investigator's machine"
    assert "the subject's request (web/flows.har): GET https://www.example.test:" in out
    assert "/alice/search?q=weather" in out and "Subject: demo mail from alice" in out
    # the bundle's and the opened manifest's signatures, checked by stock ssh-keygen
    assert 'Good "lbm-evidence" signature for gw1 with ED25519 key' in out
    assert 'Good "lbm-evidence" signature for demo-investigator with ED25519 key' in out
    assert "done in" in out and "nothing is left running" in out
    assert _processes_naming(root) == []

    # what the demo left to look at: both users' metadata, the subject's content only
    data = root / "data"
    rows = read_stream(DataPaths(data), "email").to_pylist()
    assert {r["principal"] for r in rows} == {"p1001", "p1002"}
    bundle = b"".join(p.read_bytes() for p in (root / "evidence/bundle").rglob("*") if p.is_file())
    assert b"/alice/search" not in bundle and b"Hello from alice." not in bundle  # ciphertext
    opened = b"".join(p.read_bytes() for p in (root / "evidence/opened").rglob("*") if p.is_file())
    assert b"/alice/search" in opened and b"Hello from alice." in opened
    assert (root / "internet" / "mailbox" / "0002.eml").exists()  # bob's mail was delivered
    for path in [*data.rglob("*"), *(root / "evidence").rglob("*")]:  # bob's content: nowhere
        if path.is_file():
            raw = path.read_bytes()
            assert b"/bob/search" not in raw and b"Hello from bob." not in raw, path


def test_ctrl_c_while_the_appliance_starts_leaves_nothing_running(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc = subprocess.Popen(_demo_argv(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO)  # fmt: skip
    try:
        # as soon as `lbm run` has started its daemons (they may still be starting up)
        started = root / "data" / "run" / "lbm-run.pid"
        deadline = time.monotonic() + 60
        while not started.exists() or len(_processes_naming(root)) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo never started lbm run's daemons"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "interrupted; stopping what it started" in err
    assert _processes_naming(root) == []


def test_a_non_empty_directory_or_a_file_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli.demo_cmd import demo

    (tmp_path / "keep.txt").write_text("mine")
    for where, why in ((tmp_path, "exists and is not empty"),
                       (tmp_path / "keep.txt", "exists and is not a directory")):  # fmt: skip
        result = CliRunner().invoke(demo, ["--dir", str(where)])
        assert result.exit_code == 2, result.output
        assert f"--dir {where}: {why}" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"

"""Interrupted appends (kill -9 between line and head), torn lines, and time warnings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from store import AuditError, signing
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_log(tmp_path: Path, entries: int = 3) -> tuple[DataPaths, AuditLog]:
    paths = DataPaths(tmp_path / "data")
    log = AuditLog(paths, signing.create(paths, "gw1"), Clock(fixed=T0), witness=False)
    log.append(Action.INIT, "root")
    for n in range(entries - 1):
        log.append(Action.SEARCH, "inv", n=n)
    return paths, log


def check(paths: DataPaths):
    return verify_log(paths, signing.load_public_keys(paths), require_init=True)


def cut_off_last_head(paths: DataPaths, log: AuditLog) -> None:
    """The state a kill -9 after the line's fsync and before the head's rename leaves."""
    head = paths.audit_head.read_bytes()
    log.append(Action.SEARCH, "inv", n="cut")
    paths.audit_head.write_bytes(head)


def test_entry_after_the_signed_head_is_an_interrupted_append_not_tampering(
    tmp_path: Path,
) -> None:
    paths, log = make_log(tmp_path)
    cut_off_last_head(paths, log)
    result = check(paths)
    assert result.ok, result.problems
    assert result.unsigned_after_head == [4] and result.head_seq == 3
    assert "seq 4: appended after the last signed head (interrupted append" in result.warnings[0]
    entry = log.append(Action.SEARCH, "inv", n="next")  # the next append re-signs, audited
    repaired = list(log.entries())[-2]
    assert repaired["action"] == "head_repaired" and entry["seq"] == 6
    assert repaired["fields"] == {"head_seq": 3, "log_seq": 4, "unsigned_entries": 1}
    result = check(paths)
    assert result.ok and result.unsigned_after_head == [] and result.head_seq == 6


def test_repair_head_resigns_explicitly_and_only_when_needed(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    assert log.repair_head("root") is None  # nothing to do: nothing written
    assert len(list(log.entries())) == 3
    cut_off_last_head(paths, log)
    assert log.repair_head("root") == 5
    assert [e["action"] for e in log.entries()][-1] == "head_repaired"
    assert check(paths).ok and not check(paths).unsigned_after_head


def test_a_truncated_log_is_not_mistaken_for_an_interrupted_append(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path, 5)
    paths.audit_log.write_bytes(b"".join(paths.audit_log.read_bytes().splitlines(True)[:-1]))
    result = check(paths)
    assert not result.ok and "head says 5 entries, log has 4" in result.first_problem
    with pytest.raises(AuditError, match="truncated or edited"):
        log.append(Action.SEARCH, "inv")  # appending would overwrite the evidence
    with pytest.raises(AuditError):
        log.repair_head("root")


def test_an_edited_entry_after_the_head_is_tampering(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    cut_off_last_head(paths, log)
    raw = paths.audit_log.read_bytes()
    paths.audit_log.write_bytes(raw.replace(b'"n":"cut"', b'"n":"cux"'))
    result = check(paths)
    assert not result.ok and "audit.jsonl:4: seq 4: bad signature" in result.first_problem


def test_torn_last_line_stops_appends_and_is_reported(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path)
    with paths.audit_log.open("ab") as fh:
        fh.write(b'{"seq":4,"ts":"2026-01-')  # a write cut off mid-line
    result = check(paths)
    assert not result.ok and "last line is incomplete: 23 bytes after seq 3" in result.problems[0]
    with pytest.raises(AuditError, match="last line is incomplete"):
        log.append(Action.SEARCH, "inv")
    with pytest.raises(AuditError, match="last line is incomplete"):
        log.repair_head("root")


APPENDER = """
import sys
from pathlib import Path
from store import signing
from store.audit import Action, AuditLog
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
log = AuditLog(paths, signing.load(paths), Clock(), witness=False)
print("ready", flush=True)
n = 0
while True:
    log.append(Action.SEARCH, "loop", n=n)
    n += 1
"""


def test_kill_9_during_appends_never_looks_like_tampering(tmp_path: Path) -> None:
    """A real appender killed with SIGKILL at random points: verify and the next append cope."""
    paths, _ = make_log(tmp_path, 1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen_interrupted = 0
    deadline = time.monotonic() + 90
    rounds = 0
    while time.monotonic() < deadline and (seen_interrupted < 2 or rounds < 5):
        rounds += 1
        proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(paths.root)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.05 + (rounds % 7) * 0.013)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        result = check(paths)
        assert result.ok, result.problems  # never "tampering"
        if result.unsigned_after_head:
            seen_interrupted += 1
            assert len(result.unsigned_after_head) == 1
            reader = AuditLog(paths, signing.load(paths), Clock(), witness=False)
            if seen_interrupted % 2:
                reader.repair_head("root")
            else:
                reader.append(Action.SEARCH, "after")
            assert list(reader.entries())[-2 + seen_interrupted % 2]["action"] == "head_repaired"
            assert not check(paths).unsigned_after_head
    assert seen_interrupted >= 1, f"no kill landed between line and head in {rounds} rounds"


def test_time_going_backwards_and_fake_clock_are_warnings(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    now = [T0]
    log = AuditLog(paths, signing.create(paths, "gw1"), Clock(source=lambda: now[0]), witness=False)
    log.append(Action.INIT, "root")  # a source clock counts as fake
    now[0] = T0 - timedelta(days=30)
    log.append(Action.AUTH_GRANT, "officer")
    now[0] = T0 + timedelta(days=1)
    log.append(Action.SEARCH, "inv")
    result = check(paths)
    assert result.ok and not result.problems
    assert "seq 2: time goes backwards (2025-12-02T00:00:00Z after 2026-01-01T00:00:00Z)" in (
        result.warnings
    )
    assert result.fake_clock_seqs == [1, 2, 3]
    assert any(
        "3 entries written under the fake clock" in w and "seq 1-3" in w for w in result.warnings
    )

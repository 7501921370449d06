"""The audit log detects tampering: edits, deletions, reordering, truncation, a lost head."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from store import signing
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths


def make_log(tmp_path: Path, entries: int = 5) -> tuple[DataPaths, AuditLog]:
    paths = DataPaths(tmp_path / "data")
    key = signing.create(paths, "gw1")
    log = AuditLog(paths, key, Clock(fixed=datetime(2026, 1, 1, tzinfo=UTC)), witness=False)
    for n in range(entries):
        log.append(Action.AUTH_GRANT, "officer", refs=[f"REF-{n}"], n=n)
    return paths, log


def check(paths: DataPaths, witness: Path | None = None):
    return verify_log(paths, signing.load_public_keys(paths), witness)


def lines(paths: DataPaths) -> list[bytes]:
    return paths.audit_log.read_bytes().splitlines(keepends=True)


def test_untouched_log_verifies(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    result = check(paths)
    assert result.ok, result.problems
    assert result.entries == 5


def test_entries_carry_chain_actor_and_fake_clock(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path, 2)
    first, second = (json.loads(line) for line in lines(paths))
    assert first["prev"] == "0" * 64
    assert len(second["prev"]) == 64 and second["prev"] != first["prev"]
    assert first["actor"] == "officer" and first["refs"] == ["REF-0"]
    assert first["ts"] == "2026-01-01T00:00:00Z" and first["fake_clock"] is True


@pytest.mark.parametrize("line_no", [0, 2, 4])
def test_one_byte_edit_is_reported_at_that_entry(tmp_path: Path, line_no: int) -> None:
    paths, _ = make_log(tmp_path)
    data = lines(paths)
    data[line_no] = data[line_no].replace(b'"n":', b'"m":', 1)
    paths.audit_log.write_bytes(b"".join(data))
    result = check(paths)
    assert not result.ok
    assert f"audit.jsonl:{line_no + 1}:" in result.first_problem


def test_deleted_entry_is_reported(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    data = lines(paths)
    del data[2]
    paths.audit_log.write_bytes(b"".join(data))
    result = check(paths)
    assert not result.ok and "audit.jsonl:3:" in result.first_problem


def test_swapped_entries_are_reported(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    data = lines(paths)
    data[1], data[2] = data[2], data[1]
    paths.audit_log.write_bytes(b"".join(data))
    result = check(paths)
    assert not result.ok and "audit.jsonl:2:" in result.first_problem


def test_truncation_at_the_end_is_caught_by_the_signed_head(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    data = lines(paths)
    paths.audit_log.write_bytes(b"".join(data[:-2]))
    result = check(paths)
    assert not result.ok and "head says 5 entries, log has 3" in result.first_problem


def test_torn_last_line_is_reported(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    raw = paths.audit_log.read_bytes()
    paths.audit_log.write_bytes(raw[:-10])
    result = check(paths)
    assert not result.ok and "incomplete" in result.first_problem


def test_missing_head_is_reported(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path)
    paths.audit_head.unlink()
    result = check(paths)
    assert not result.ok and "head is missing" in result.first_problem


def test_rewritten_tail_with_gateway_key_is_caught_by_witness(tmp_path: Path) -> None:
    """Someone holding the gateway key can rewrite the tail, but not what a witness saw."""
    paths, log = make_log(tmp_path, 2)
    saved = (paths.audit_log.read_bytes(), paths.audit_head.read_bytes())
    log.append(Action.AUTH_GRANT, "officer", refs=["REF-2"])
    witness = tmp_path / "journal.txt"
    head = paths.audit_head.read_text()
    witness.write_text(f"Nov 24 12:00:00 gw lbm-audit[1]: head {head}")
    assert check(paths, witness).ok
    paths.audit_log.write_bytes(saved[0])  # roll back to an older saved log and head...
    paths.audit_head.write_bytes(saved[1])
    assert check(paths).ok  # ...which is self-consistent...
    result = check(paths, witness)  # ...but the witness saw seq 3
    assert not result.ok and "witnessed seq 3 is missing" in result.first_problem
    log.append(Action.AUTH_GRANT, "forger", refs=["REF-X"])  # re-signed, consistent chain
    assert check(paths).ok
    result = check(paths, witness)
    assert not result.ok and "witnessed seq 3 differs" in result.first_problem


def test_old_entries_verify_after_key_rotation(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path, 2)
    old_fp, new_fp = log.rotate_key("officer", "gw1")
    log.append(Action.AUTH_GRANT, "officer")
    result = check(paths)
    assert result.ok, result.problems
    assert result.entries == 4 and result.signers == [old_fp, new_fp]


def _append_many(root: str, n: int) -> None:
    paths = DataPaths(Path(root))
    log = AuditLog(paths, signing.load(paths), Clock(), witness=False)
    for i in range(n):
        log.append(Action.SEARCH, "proc", query_no=i)


def test_concurrent_appends_from_processes_keep_the_chain(tmp_path: Path) -> None:
    paths, _ = make_log(tmp_path, 1)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(paths.root), 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = check(paths)
    assert result.ok, result.problems
    assert result.entries == 76


def test_entries_never_hold_unknown_actions(tmp_path: Path) -> None:
    paths, log = make_log(tmp_path, 0)
    with pytest.raises(ValueError):
        log.append("not_an_action", "x")
    assert not paths.audit_log.exists() or paths.audit_log.read_bytes() == b""

"""The journal witness: heads reach a real unix datagram socket; outages are counted and audited."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from store import signing, witness
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A stand-in for /dev/log: a datagram socket this test binds and reads."""
    path = tmp_path / "dev-log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def make_log(tmp_path: Path, socket_path: Path) -> tuple[DataPaths, AuditLog]:
    paths = DataPaths(tmp_path / "data")
    key = signing.create(paths, "gw1")
    log = AuditLog(paths, key, Clock(fixed=T0), witness=True, witness_socket=str(socket_path))
    log.append(Action.INIT, "root")
    return paths, log


def actions(log: AuditLog) -> list[str]:
    return [e["action"] for e in log.entries()]


def test_every_head_reaches_the_journal_socket_and_verifies_as_witness(
    tmp_path: Path, journal: tuple[Path, socket.socket]
) -> None:
    path, sock = journal
    paths, log = make_log(tmp_path, path)
    log.append(Action.SEARCH, "inv", query="q")
    lines = received(sock)
    assert len(lines) == 2
    assert all(x.startswith(f"<85>lbm-audit[{os.getpid()}]: head {{".encode()) for x in lines)
    assert json.loads(lines[-1].split(b"head ", 1)[1]) == json.loads(paths.audit_head.read_bytes())
    file = tmp_path / "journal.txt"
    file.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_log(paths, signing.load_public_keys(paths), file)
    assert result.ok and result.witnessed == 2, result.problems
    state = witness.load_state(paths.audit_dir)
    assert state.last_ok and not state.failing and state.failures_total == 0
    assert actions(log) == ["init", "search"]


def test_forged_journal_lines_are_ignored_not_trusted(
    tmp_path: Path, journal: tuple[Path, socket.socket]
) -> None:
    """Any local user can write to /dev/log: an unsigned 'head' cannot fail or pass a log."""
    path, sock = journal
    paths, _ = make_log(tmp_path, path)
    lines = received(sock)
    fake = json.dumps({"seq": 99, "hash": "0" * 64, "ts": "x", "key": "k", "sig": "AAAA"})
    file = tmp_path / "journal.txt"
    file.write_text(f"lbm-audit[1]: head {fake}\n" + lines[0].decode() + "\n")
    result = verify_log(paths, signing.load_public_keys(paths), file)
    assert result.ok and result.witnessed == 1
    assert any("not a head signed by this log's keys" in w for w in result.warnings)
    file.write_text(f"lbm-audit[1]: head {fake}\n")
    result = verify_log(paths, signing.load_public_keys(paths), file)
    assert not result.ok and "no head of this log found" in result.first_problem


@pytest.mark.parametrize("kind", ["missing", "refused"])
def test_an_outage_is_counted_and_audited_once_then_its_end(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "dev-log"
    if kind == "refused":  # a socket file nobody listens on any more: ECONNREFUSED
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(str(path))
        dead.close()
    paths, log = make_log(tmp_path, path)
    for n in range(4):
        log.append(Action.SEARCH, "inv", n=n)
    state = witness.load_state(paths.audit_dir)
    assert state.failing and state.outage_failures == 5 and state.failures_total == 5
    assert state.outage_first_seq == 1
    assert state.outage_error == f"{'ENOENT' if kind == 'missing' else 'ECONNREFUSED'} {path}"
    # one entry per outage, written by the next append, not one per append
    assert actions(log) == ["init", "witness_failed", "search", "search", "search", "search"]
    failed = next(e for e in log.entries() if e["action"] == "witness_failed")
    assert failed["fields"]["first_unwitnessed_seq"] == 1 and failed["fields"]["socket"] == str(
        path
    )
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        log.append(Action.SEARCH, "inv", n=5)  # gets through: the outage ends
        log.append(Action.SEARCH, "inv", n=6)  # records its end
        log.append(Action.SEARCH, "inv", n=7)
        assert len(received_blocking(sock)) == 3
    finally:
        sock.close()
    assert actions(log)[6:] == ["search", "witness_restored", "search", "search"]
    restored = next(e for e in log.entries() if e["action"] == "witness_restored")
    assert restored["fields"]["failures"] == 5 and restored["fields"]["since"]
    state = witness.load_state(paths.audit_dir)
    assert not state.failing and state.failures_total == 5
    assert verify_log(paths, signing.load_public_keys(paths)).ok


def received_blocking(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    return received(sock)


def test_a_full_journal_queue_is_a_failure_not_a_stall(tmp_path: Path) -> None:
    path = tmp_path / "dev-log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    sock.bind(str(path))
    try:
        errors = [witness.send(str(path), b"x" * 2000) for _ in range(2000)]
    finally:
        sock.close()
    assert f"EAGAIN {path}" in errors  # never blocks: the append goes on, the loss is counted


def test_witness_off_touches_no_socket_and_no_state(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    log = AuditLog(paths, signing.create(paths, "gw1"), Clock(), witness=False)
    log.append(Action.INIT, "root")
    assert not witness.state_path(paths.audit_dir).exists()

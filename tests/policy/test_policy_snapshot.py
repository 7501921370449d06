"""Snapshot reloads: a SnapshotSource held in this process sees grants, cancellations, identity
imports and config edits made by other processes (the real `lbm` CLI) within seconds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lbm_testing import INV_RECIPIENT, Lbm, grant_argv

from appliance.policy.decide import decide
from appliance.policy.model import Authorisation
from appliance.policy.snapshot import Snapshot, SnapshotSource
from store import investigators as inv_table
from store import signing
from store import sqlite as store_sqlite
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths


def register_investigator(data_dir: Path) -> None:
    conn = store_sqlite.connect(DataPaths(data_dir).registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", "2026-01-01T00:00:00Z")
    conn.close()


def grant_args(ref: str, subject: str = "p12345") -> list[str]:
    return grant_argv(ref, subject, channel="web,email")


def wait_for(
    source: SnapshotSource, predicate: Callable[[Snapshot], bool], limit: float = 10.0
) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if predicate(source.current()):
            return time.monotonic() - began
        time.sleep(0.02)
    raise AssertionError(
        f"snapshot did not change within {limit} s (last error: {source.last_error})"
    )


def dnd_from(config: Path) -> Callable[[], list[str]]:
    def load() -> list[str]:
        data = tomllib.loads(config.read_text())
        return list(data.get("do_not_decrypt", {}).get("hosts", []))

    return load


def full_now(snap: Snapshot, principal: str = "p12345") -> bool:
    return decide(snap, principal, "web", datetime.now(UTC)).full


def test_grant_and_cancel_from_another_process_seen_within_5_seconds(lbm: Lbm) -> None:
    register_investigator(lbm.data_dir)
    with SnapshotSource(DataPaths(lbm.data_dir)) as source:
        assert not full_now(source.current())
        began = time.monotonic()
        lbm(*grant_args("CA1-2026-0042"), check=True)
        waited = wait_for(source, full_now)
        assert time.monotonic() - began < 5 + 2  # CLI run included
        assert waited < 5
        began = time.monotonic()
        lbm("auth", "cancel", "CA1-2026-0042", "--reason", "suspect cleared", check=True)
        waited = wait_for(source, lambda s: not full_now(s))
        assert waited < 5, waited
        snap = source.current()
        auth = snap.get("CA1-2026-0042")
        assert isinstance(auth, Authorisation) and auth.cancelled_at is not None


def test_inline_polling_without_a_thread(lbm: Lbm) -> None:
    register_investigator(lbm.data_dir)
    source = SnapshotSource(DataPaths(lbm.data_dir), interval=0.05)
    first = source.current()
    assert first.authorisations == ()
    lbm(*grant_args("R-1"), check=True)
    wait_for(source, lambda s: s.get("R-1") is not None, limit=5)
    assert source.current().version > first.version
    version = source.current().version
    time.sleep(0.1)
    assert source.current().version == version  # nothing changed: no reload
    source.stop()


def test_asyncio_watch_and_listener(lbm: Lbm) -> None:
    register_investigator(lbm.data_dir)
    source = SnapshotSource(DataPaths(lbm.data_dir), interval=0.05)
    seen: list[int] = []
    source.add_listener(lambda snap: seen.append(len(snap.authorisations)))

    async def scenario() -> float:
        task = asyncio.create_task(source.watch())
        began = time.monotonic()
        await asyncio.to_thread(lbm, *grant_args("R-2"), check=True)
        await asyncio.sleep(0)  # let the task start: from now on current() never polls
        while source.current().get("R-2") is None:
            assert time.monotonic() - began < 5, source.last_error
            await asyncio.sleep(0.02)
        task.cancel()
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5
    assert seen and seen[-1] == 1


def test_config_edit_reloads_do_not_decrypt_and_a_broken_config_keeps_the_last(lbm: Lbm) -> None:
    config = lbm.data_dir / "lbm.toml"
    source = SnapshotSource(
        DataPaths(lbm.data_dir), config_path=config, load_do_not_decrypt=dnd_from(config)
    ).start()
    try:
        assert source.current().is_do_not_decrypt("www.nhs.uk")
        assert not source.current().is_do_not_decrypt("union.example")
        text = config.read_text()
        config.write_text(text.replace("hosts = [", 'hosts = ["*.union.example", ', 1))
        wait_for(source, lambda s: s.is_do_not_decrypt("branch.union.example"), limit=5)
        config.write_text(text + "\n[broken\n")
        time.sleep(0.6)
        assert source.last_error is not None and "TOMLDecodeError" in source.last_error
        assert source.current().is_do_not_decrypt("branch.union.example")  # kept
        config.write_text(text)
        wait_for(source, lambda s: not s.is_do_not_decrypt("branch.union.example"), limit=5)
        assert source.last_error is None
    finally:
        source.stop()


def test_registry_created_after_the_source_starts(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "late")
    source = SnapshotSource(paths, interval=0.05)
    assert source.current().authorisations == () and source.last_error is None
    runner = Lbm(paths.root)
    runner("init", check=True)
    register_investigator(paths.root)
    runner(*grant_args("R-3"), check=True)
    wait_for(source, lambda s: s.get("R-3") is not None, limit=5)
    source.stop()


def test_identity_import_reaches_the_snapshot(lbm: Lbm, tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        "p12345,username,jsmith,,\n"
        "p12345,email,J.Smith@force.example,,\n"
    )
    with SnapshotSource(DataPaths(lbm.data_dir)) as source:
        assert source.current().resolve(username="jsmith") is None
        result = lbm("identity", "import", str(feed))
        if result.returncode != 0:
            pytest.fail(f"lbm identity import failed: {result.stderr}")
        wait_for(source, lambda s: s.resolve(username="jsmith") == "p12345", limit=5)
        assert source.current().resolve(email="j.smith@force.example") == "p12345"


def test_cached_identity_map_is_reused_until_the_next_identity_load(lbm, tmp_path) -> None:
    """A registry change that is not an identity load reuses the (possibly large) map."""
    from appliance.policy.snapshot import CachedIdentityLoader
    from store import sqlite as store_sqlite
    from store.paths import DataPaths

    feed = tmp_path / "feed.csv"
    feed.write_text("principal,kind,value,valid_from,valid_to\np1,username,alice,,\n")
    lbm("identity", "import", str(feed), check=True)
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    loader = CachedIdentityLoader()
    first = loader(conn)
    assert first.resolve(username="alice") == "p1"
    lbm("keys", "investigator", "add", "inv9",
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "--principal", "p9",
        check=True)  # fmt: skip
    assert loader(conn) is first
    feed.write_text("principal,kind,value,valid_from,valid_to\np2,username,alice,,\n")
    lbm("identity", "import", str(feed), check=True)
    second = loader(conn)
    assert second is not first and second.resolve(username="alice") == "p2"
    conn.close()


# -- fail closed: a registry out of reach for more than 5 s withdraws every authorisation ------
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextmanager
def exclusive_lock(registry: Path) -> Iterator[None]:
    """A real `BEGIN EXCLUSIVE` held by another process until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(registry)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def watched_source(lbm: Lbm) -> SnapshotSource:
    """A daemon's source on an initialised data dir with a grant for p12345 (web)."""
    register_investigator(lbm.data_dir)
    lbm(*grant_args("R-STALE"), check=True)
    paths = DataPaths(lbm.data_dir)
    audit = AuditLog(paths, signing.load(paths), Clock())
    return SnapshotSource(
        paths, interval=0.05, audit=audit, actor="test", state_file=paths.run / "policy.json"
    )


def policy_entries(data_dir: Path) -> list[dict[str, object]]:
    return [
        e
        for e in AuditLog(DataPaths(data_dir), None, Clock()).entries()
        if e["action"] in ("capture_gap", "policy_restored")
    ]


def state(data_dir: Path) -> str:
    return str(json.loads((data_dir / "run" / "policy.json").read_text())["state"])


def test_corrupt_registry_withdraws_every_authorisation_after_5_s_and_recovery_restores(
    lbm: Lbm,
) -> None:
    registry = DataPaths(lbm.data_dir).registry
    conn = store_sqlite.connect(registry)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    conn.close()
    with watched_source(lbm).start() as source:
        assert full_now(source.current()) and state(lbm.data_dir) == "ok"
        good = registry.read_bytes()
        with registry.open("r+b") as fh:  # overwrite the header in place
            fh.write(b"\xff" * 100)
        began = time.monotonic()
        time.sleep(4)
        assert full_now(source.current())  # a short outage keeps the last good policy
        waited = wait_for(source, lambda s: not full_now(s), limit=10) + 4
        assert 4.5 < waited < 6.5, waited
        snap = source.current()
        assert snap.stale and snap.authorisations == ()
        assert not decide(snap, "p12345", "web", datetime.now(UTC)).refs
        time.sleep(1)  # further failed polls: still one entry for the outage
        assert state(lbm.data_dir) == "stale"
        shown = lbm("status", check=True).stdout
        assert "policy         STALE since" in shown and "metadata only" in shown
        assert "R-STALE" not in shown and "p12345" not in shown
        entries = policy_entries(lbm.data_dir)
        assert [(e["action"], e["fields"]["reason"]) for e in entries] == [  # type: ignore[index]
            ("capture_gap", "policy_stale")
        ]
        assert "DatabaseError" in str(entries[0]["fields"]["error"])  # type: ignore[index]
        with registry.open("r+b") as fh:
            fh.write(good[:100])
        wait_for(source, full_now, limit=5)
        assert not source.current().stale and time.monotonic() - began > 5
        assert state(lbm.data_dir) == "ok"
        assert "STALE" not in lbm("status", check=True).stdout
        actions = [e["action"] for e in policy_entries(lbm.data_dir)]
        assert actions == ["capture_gap", "policy_restored"]


def test_locked_registry_fails_closed_until_the_lock_is_released(lbm: Lbm) -> None:
    registry = DataPaths(lbm.data_dir).registry
    source = watched_source(lbm)
    source.stop()  # the journal mode can change only with no other connection open
    conn = sqlite3.connect(registry, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    with source.start():
        assert full_now(source.current())
        with exclusive_lock(registry):
            waited = wait_for(source, lambda s: not full_now(s), limit=10)
            assert 4.5 < waited < 7, waited
            deadline = time.monotonic() + 3  # the poll that notices waits out its busy timeout
            while state(lbm.data_dir) != "stale":
                assert time.monotonic() < deadline, source.last_error
                time.sleep(0.05)
            assert "locked" in str(source.last_error)
        wait_for(source, full_now, limit=5)
    assert [e["action"] for e in policy_entries(lbm.data_dir)] == [
        "capture_gap",
        "policy_restored",
    ]


def test_a_writer_holding_a_wal_lock_is_no_outage(lbm: Lbm) -> None:
    """In WAL mode readers go on while a writer holds BEGIN EXCLUSIVE: nothing is stale."""
    registry = DataPaths(lbm.data_dir).registry
    with watched_source(lbm).start() as source, exclusive_lock(registry):
        time.sleep(6)
        assert full_now(source.current()) and not source.current().stale
    assert policy_entries(lbm.data_dir) == []


def test_decide_honours_a_stale_snapshot() -> None:
    now = datetime.now(UTC)
    fresh = Snapshot.build(version=1)
    assert fresh.stale_copy(2).stale and fresh.stale_copy(2).version == 2
    assert not decide(Snapshot(stale=True), "p1", "web", now).full

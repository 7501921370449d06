"""Snapshot reloads: a SnapshotSource held in this process sees grants, cancellations, identity
imports and config edits made by other processes (the real `lbm` CLI) within seconds."""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lbm_testing import INV_RECIPIENT, Lbm, grant_argv

from appliance.policy.decide import decide
from appliance.policy.model import Authorisation
from appliance.policy.snapshot import Snapshot, SnapshotSource
from store import investigators as inv_table
from store import sqlite as store_sqlite
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

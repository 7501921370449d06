"""`MetadataWriter.append_nowait` from an asyncio event loop while the disk stalls, the
METADATA_GAP audit entries it leads to, and the modes of the files the writer makes.

The stalled disk: `store.journal.Journal.io_hook`, a documented test seam at the journal's I/O
boundary, is set to a function that blocks on an Event before the journal's write and fsync, so
the writer's real flush thread stops inside its I/O (holding the engine's lock) exactly as it
would on a disk that stopped answering. No FUSE or device-mapper delay is available here.
Everything else is real: the writer, its threads, the journal, Parquet and a signed audit log.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from store import SchemaError, StoreError, signing
from store.audit import Action, AuditLog
from store.clock import Clock, parse_utc
from store.metadata import MetadataWriter, QueueFull, read_stream
from store.paths import DataPaths

T0 = datetime(2026, 3, 1, 9, 58, tzinfo=UTC)
CANARY = "canary-5d1e77"
STALL_LIMIT = 8.0  # seconds a stall lasts at most


class RecordingAudit(AuditLog):
    """The real audit log, also noting which thread appended each entry."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.threads: list[str] = []

    def append(
        self, action: Action | str, actor: str, refs: Iterable[str] = (), **fields: Any
    ) -> dict[str, Any]:
        self.threads.append(threading.current_thread().name)
        return super().append(action, actor, refs, **fields)


class StalledDisk:
    """Blocks the journal's write and fsync while stalled (through `Journal.io_hook`)."""

    def __init__(self, w: MetadataWriter) -> None:
        self.running = threading.Event()
        self.running.set()
        self.entered = threading.Event()
        w._engine.journal.io_hook = self.hook

    def hook(self, op: str) -> None:
        if not self.running.is_set():
            self.entered.set()
            # Bounded, so a caller that wrongly waits for the disk fails an assertion on
            # its latency instead of hanging the test run.
            self.running.wait(STALL_LIMIT)

    @contextmanager
    def stalled(self, w: MetadataWriter) -> Iterator[None]:
        """Stall, and return once the flush thread is stuck inside the journal's I/O."""
        self.entered.clear()
        self.running.clear()
        try:
            w.append({"ts": T0, "uid": "wake-the-flusher"})
            w._engine.wake.set()
            assert self.entered.wait(10), "the flush thread never reached the journal"
            yield
        finally:
            self.running.set()


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    return DataPaths(tmp_path / "data")


def audit_log(paths: DataPaths) -> RecordingAudit:
    key = signing.create(paths, "gw1")
    return RecordingAudit(paths, key, Clock(), witness=False)


def gap_entries(paths: DataPaths) -> list[dict[str, Any]]:
    if not paths.audit_log.exists():
        return []
    entries = [json.loads(line) for line in paths.audit_log.read_bytes().splitlines()]
    return [e for e in entries if e["action"] == Action.METADATA_GAP.value]


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def row(uid: str) -> dict[str, Any]:
    return {"ts": T0, "uid": uid, "host": f"{CANARY}.example.org", "proxy_user": CANARY}


async def hammer(
    append: Callable[[dict[str, Any]], Any], prefix: str, n: int, results: dict[str, bool]
) -> float:
    """Append `n` rows from the event loop while a ticker measures how late the loop runs;
    returns the ticker's worst lateness in seconds.

    Python's cyclic garbage collector is paused meanwhile: its full collections take as long
    as everything the test process holds makes them (up to ~100 ms here after the other
    tests), whoever allocates, so they would measure pytest's heap rather than the writer.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - start - 0.005)

    async def producer() -> None:
        try:
            for i in range(n):
                uid = f"{prefix}{i}"
                try:
                    results[uid] = append(row(uid)) is not False
                except QueueFull:
                    results[uid] = False
                if i % 25 == 0:
                    await asyncio.sleep(0)  # a proxy serves other connections between rows
        finally:
            done.set()

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        await producer()
        await tick
    finally:
        if gc_was_enabled:
            gc.enable()
    return worst


def test_event_loop_stays_responsive_and_each_overload_episode_is_audited_once(
    paths: DataPaths,
) -> None:
    audit = audit_log(paths)
    w = MetadataWriter(
        "web",
        "proxy",
        paths=paths,
        gateway="gw1",
        queue_limit=400,
        flush_interval=0.05,
        parquet_interval=3600,
        audit=audit,
        actor="proxy",
        gap_quiet=0.3,
    )
    disk = StalledDisk(w)
    results: dict[str, bool] = {}
    episodes = []
    for episode in ("e1-", "e2-"):
        before = w.gaps
        with disk.stalled(w):
            worst = asyncio.run(hammer(w.append_nowait, episode, 3000, results))
            # Thousands of appends against a stuck disk never held the loop up.
            assert worst < 0.05, f"event loop stalled {worst * 1000:.0f} ms"
            refused = [u for u, ok in results.items() if u.startswith(episode) and not ok]
            assert w.gaps - before == len(refused) >= 3000 - 400
            assert gap_entries(paths) == episodes  # the episode is not over while stalled
        # The disk answers again: the queue drains and rows are accepted again.
        late = f"{episode}after"
        assert wait_for(lambda late=late: w.append_nowait(row(late)))
        results[late] = True
        w.flush()
        want = len(episodes) + 1
        assert wait_for(lambda want=want: len(gap_entries(paths)) == want)
        time.sleep(0.5)  # ... and the reporter writes no second entry for the same episode
        entries = gap_entries(paths)
        assert len(entries) == len(episodes) + 1
        episodes = entries
        entry = entries[-1]["fields"]
        assert entry["rows"] == entry["episode_rows"] == w.gaps - before
        assert entry["ended"] is True and entry["reason"] == "queue_full"
        assert (entry["stream"], entry["writer"], entry["gateway"]) == ("web", "proxy", "gw1")
        assert entry["episode_start"] == entry["first"]
        assert parse_utc(entry["first"]) <= parse_utc(entry["last"])
        assert entries[-1]["actor"] == "proxy"
    w.close()
    assert len(gap_entries(paths)) == 2  # closing reports nothing more: no episode was open
    # Written by the reporter thread, never by the event loop's thread.
    assert audit.threads and set(audit.threads) == {"lbm-gaps-proxy"}
    # No row content anywhere in the audit log.
    for path in paths.audit_dir.iterdir():
        assert CANARY.encode() not in path.read_bytes()
    # Exactly the accepted rows are stored; no refused one.
    stored = set(read_stream(paths, "web").column("uid").to_pylist())
    accepted = {u for u, ok in results.items() if ok}
    assert stored - {"wake-the-flusher"} == accepted


def test_converting_a_large_backlog_does_not_starve_the_loop(paths: DataPaths) -> None:
    """The flush thread converts 65,536 queued rows at a time; pyarrow holds the GIL for each
    call, which stalled the loop ~250 ms when a batch was converted in one call. The bound is
    looser than above because it covers seconds of a loaded shared machine, not a fraction."""
    w = MetadataWriter("web", "proxy", paths=paths, gateway="gw1")
    results: dict[str, bool] = {}

    def append(r: dict[str, Any]) -> bool:
        r.update(method="GET", status=200, client_ip="10.0.0.1", server_port=443)
        return w.append_nowait(r)

    worst = asyncio.run(hammer(append, "g", 140_000, results))
    w.close()
    assert worst < 0.1, f"event loop stalled {worst * 1000:.0f} ms"
    assert all(results.values()) and w.gaps == 0
    assert read_stream(paths, "web").num_rows == 140_000


def test_blocking_append_would_stall_the_loop(paths: DataPaths) -> None:
    """The same stall through `append`: the ticker sees it (so the test above can fail)."""
    w = MetadataWriter(
        "web", "proxy", paths=paths, gateway="gw1", queue_limit=400, block_timeout=0.3
    )
    disk = StalledDisk(w)
    results: dict[str, bool] = {}
    with disk.stalled(w):
        worst = asyncio.run(hammer(w.append, "b", 402, results))  # the last two block
    w.close()
    assert worst >= 0.25
    assert list(results.values()).count(False) == 2
    assert w.gaps == 0  # `append` raises QueueFull instead; it does not count gaps


def test_a_long_episode_is_reported_while_it_lasts(paths: DataPaths) -> None:
    audit = audit_log(paths)
    w = MetadataWriter(
        "web",
        "proxy",
        paths=paths,
        gateway="gw1",
        queue_limit=50,
        audit=audit,
        gap_quiet=0.2,
        gap_report_interval=0.3,
    )
    disk = StalledDisk(w)
    with disk.stalled(w):

        async def trickle() -> None:
            for i in range(1200):
                w.append_nowait(row(f"t{i}"))
                await asyncio.sleep(0.001)

        asyncio.run(trickle())
        # The journal is stuck, yet the overload is on record while it lasts.
        assert wait_for(lambda: len(gap_entries(paths)) >= 2, timeout=10)
        assert all(e["fields"]["ended"] is False for e in gap_entries(paths))
    assert wait_for(lambda: any(e["fields"]["ended"] for e in gap_entries(paths)))
    asyncio.run(w.aclose())
    fields = [e["fields"] for e in gap_entries(paths)]
    assert [f["ended"] for f in fields] == [False] * (len(fields) - 1) + [True]
    assert sum(f["rows"] for f in fields) == fields[-1]["episode_rows"] == w.gaps
    assert len({f["episode_start"] for f in fields}) == 1
    spans = [(parse_utc(f["first"]), parse_utc(f["last"])) for f in fields if f["rows"]]
    assert all(a <= b for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def test_an_episode_open_at_close_is_reported_by_close(paths: DataPaths) -> None:
    seen: list[Any] = []
    w = MetadataWriter(
        "web", "proxy", paths=paths, gateway="gw1", queue_limit=5, on_gap=seen.append
    )
    disk = StalledDisk(w)
    with disk.stalled(w):
        accepted = [w.append_nowait(row(f"c{i}")) for i in range(20)]
    assert accepted.count(False) == w.gaps == 20 - 5
    w.close()
    assert len(seen) == 1 and seen[0].ended and seen[0].rows == w.gaps


def test_a_writer_stopped_by_a_failure_refuses_and_reports(paths: DataPaths) -> None:
    """A round's files are published but the journal cannot be emptied (EIO, injected through
    the same seam): the writer stops until restarted; append_nowait refuses meanwhile."""
    seen: list[Any] = []
    w = MetadataWriter(
        "web", "proxy", paths=paths, gateway="gw1", parquet_interval=3600, on_gap=seen.append
    )

    def failing(op: str) -> None:
        if (paths.journal / "proxy.commit").exists():
            raise OSError(errno.EIO, "Input/output error")

    w._engine.journal.io_hook = failing
    assert w.append_nowait(row("p1")) is True
    with pytest.raises(StoreError, match="stopped"):
        w.publish()
    assert w.append_nowait(row("p2")) is False and w.gaps == 1
    with pytest.raises(StoreError, match="stopped"):
        w.close()
    assert [(r.reason, r.rows, r.ended) for r in seen] == [("writer_stopped", 1, True)]
    with MetadataWriter("web", "proxy", paths=paths, gateway="gw1"):
        pass  # the restart rolls the round forward
    assert read_stream(paths, "web").column("uid").to_pylist() == ["p1"]


def test_append_nowait_still_refuses_bad_columns_and_a_closed_writer(paths: DataPaths) -> None:
    w = MetadataWriter("email", "smtp", paths=paths, gateway="gw1")
    with pytest.raises(SchemaError, match="'subject' is content-like") as err:
        w.append_nowait({"ts": T0, "uid": "m1", "subject": CANARY})
    assert CANARY not in str(err.value)
    with pytest.raises(SchemaError, match="unknown column 'flavour'"):
        w.append_nowait({"ts": T0, "uid": "m1", "flavour": 1})
    with pytest.raises(SchemaError, match="'uid' is required"):
        w.append_nowait({"ts": T0})
    assert w.append_nowait({"ts": T0, "uid": "ok"}) is True
    assert w.gaps == 0
    w.close()
    with pytest.raises(StoreError, match="is closed"):
        w.append_nowait({"ts": T0, "uid": "late"})
    assert read_stream(paths, "email").column("uid").to_pylist() == ["ok"]


def modes(root: Path) -> dict[str, str]:
    found = {str(root): oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_files_are_0600_and_dirs_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    paths = DataPaths(tmp_path / "fresh" / "data")  # the writer makes every directory
    old = os.umask(umask)
    try:
        clock = Clock(fixed=T0)
        w = MetadataWriter("web", "proxy", paths=paths, gateway="gw1", clock=clock)
        commit_modes: list[str] = []

        def during_round(op: str) -> None:  # the journal is emptied while the record exists
            commit = paths.journal / "proxy.commit"
            if commit.exists():
                commit_modes.append(oct(stat.S_IMODE(commit.stat().st_mode)))

        w._engine.journal.io_hook = during_round
        for i in range(3):
            w.append_nowait({"ts": T0 + timedelta(hours=i % 2), "uid": f"m{i}"})
            w.flush()
            w.publish()
        clock.set(T0 + timedelta(hours=3))
        assert w.compact() == 1  # the hour with two files was merged
        w.append({"ts": T0, "uid": "late"})
        w.close()
    finally:
        os.umask(old)
    assert commit_modes and set(commit_modes) == {"0o600"}
    found = modes(tmp_path / "fresh")
    assert any(p.endswith(".parquet") for p in found) and "data/journal/proxy.journal" in found
    wrong = {
        p: m
        for p, m in found.items()
        if m != ("0o700" if (tmp_path / "fresh" / p).is_dir() else "0o600")
    }
    assert wrong == {}
    assert sorted(read_stream(paths, "web").column("uid").to_pylist()) == [
        "late",
        "m0",
        "m1",
        "m2",
    ]

"""`SnapshotSource`: keeps a daemon's policy `Snapshot` fresh, and fails closed.

`SnapshotSource` polls `PRAGMA data_version` on its own read connection to registry.sqlite (it
changes whenever another connection commits: a grant, a cancellation, an identity import) and
the config file's stat (for the do-not-decrypt list), every `interval` seconds (default 0.25 s),
so a change is in force within a second. It runs as a daemon thread (`start()`, or a `with`
block), as an asyncio task (`await source.watch()`), or with neither: then `current()` polls
inline at most once per interval. A reload that fails (a half-written config, a locked database)
keeps the previous snapshot (or, for a broken config, the previous do-not-decrypt list while
registry changes still apply) and records `last_error`; it is retried on the next poll.

Fail closed: a cancellation must take effect within 5 s, so a snapshot that could not be
checked against the registry for longer than `stale_after` (5 s: the registry unreadable,
locked or corrupt, or the poller stuck) is no longer trusted. `current()` then hands out a
*stale* snapshot: no authorisations, `stale=True` (which `decide` honours too), the identity map
and do-not-decrypt list kept, so every principal gets metadata only until a poll succeeds. Each
outage is audited once (`capture_gap`, reason `policy_stale`) and its end once
(`policy_restored`), and the state is written to `state_file` (run/policy.json, which
`lbm status` reads).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.policy.snapshot_data import (
    CachedIdentityLoader,
    IdentityResolver,
    Snapshot,
    load_snapshot,
)
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import format_utc
from store.fsutil import atomic_write
from store.paths import DataPaths

STALE_AFTER = 5.0  # seconds without a successful registry poll before the policy is distrusted
POLL_BUSY_MS = 1000  # a locked registry makes one poll wait at most this long


def _stat_key(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class SnapshotSource:
    """Keeps a current `Snapshot` of one data directory, reloaded on change, failing closed."""

    def __init__(
        self,
        paths: DataPaths,
        *,
        config_path: Path | None = None,
        load_do_not_decrypt: Callable[[], Sequence[str]] | None = None,
        do_not_decrypt: Sequence[str] = (),
        identity_loader: Callable[[sqlite3.Connection], IdentityResolver] | None = None,
        interval: float = 0.25,
        stale_after: float = STALE_AFTER,
        audit: AuditLog | None = None,
        actor: str = "lbm",
        name: str | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.paths = paths
        self.config_path = config_path
        self.interval = interval
        self.stale_after = stale_after
        self.audit = audit
        self.actor = actor
        self.name = name
        self.state_file = state_file
        self.config_error: str | None = None
        self.registry_error: str | None = None
        self.report_error: str | None = None  # the last audit or state-file write that failed
        self.reloads = 0
        self.outages = 0
        self._load_dnd = load_do_not_decrypt
        self._dnd: tuple[str, ...] = tuple(do_not_decrypt)
        self._identity_loader = identity_loader or CachedIdentityLoader()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_key: tuple[int, int, int] | None = None
        self._data_version: int | None = None
        self._config_key = _stat_key(config_path)
        self._last_poll = 0.0
        self._last_ok = time.monotonic()  # the last poll that reached the registry
        self._versions = itertools.count(1)
        self._stale_snapshot: Snapshot | None = None
        self._stale_since: str | None = None  # set while an outage is on record
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._thread: threading.Thread | None = None
        self._watching = False  # an asyncio task polls: current() never touches the database
        self._stop = threading.Event()
        self._snapshot = Snapshot.build(do_not_decrypt=self._dnd)
        if self._load_dnd is not None:
            self._dnd = tuple(self._load_dnd())
        self.refresh(force=True)

    # -- reading ---------------------------------------------------------------------------
    @property
    def last_error(self) -> str | None:
        """Why the last reload failed (registry first, then config), or None."""
        return self.registry_error or self.config_error

    @property
    def stale(self) -> bool:
        """True when the registry has not been reached for longer than `stale_after`."""
        return time.monotonic() - self._last_ok > self.stale_after

    @property
    def checked_ago(self) -> float:
        """Seconds since the registry was last reached (the snapshot's age, for metrics)."""
        return max(0.0, time.monotonic() - self._last_ok)

    def current(self) -> Snapshot:
        """The current snapshot. Cheap; without a watcher it polls at most once per interval.
        Stale (no authorisations) once the registry has been out of reach too long."""
        if (
            self._thread is None
            and not self._watching
            and time.monotonic() - self._last_poll >= self.interval
        ):
            self.refresh()
        snapshot = self._snapshot
        if not self.stale:
            return snapshot
        stale = self._stale_snapshot
        if stale is None:
            stale = snapshot.stale_copy(next(self._versions))
            self._stale_snapshot = stale
        return stale

    def add_listener(self, callback: Callable[[Snapshot], None]) -> None:
        """Call `callback(snapshot)` after each reload (from the polling thread: keep it short
        and thread-safe, e.g. `loop.call_soon_threadsafe`)."""
        self._listeners.append(callback)

    # -- polling ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection | None:
        path = self.paths.registry
        key = _stat_key(path)
        if key is None:
            self._close()
            return None
        if self._conn is not None and self._conn_key != key:
            # the file itself changed (a checkpoint, a restore, an overwrite): read it afresh
            # rather than trust this connection's page cache
            self._close()
        if self._conn is None:
            conn = store_sqlite.connect(path, readonly=True)
            try:
                conn.execute(f"PRAGMA busy_timeout={POLL_BUSY_MS}")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
            self._conn_key = key
            self._data_version = None
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._conn_key = None
        self._data_version = None

    def refresh(self, *, force: bool = False) -> bool:
        """Reload if the registry or the config changed (or `force`). True if reloaded."""
        snapshot: Snapshot | None = None
        self._lock.acquire()
        try:
            self._last_poll = time.monotonic()
            was_stale = self._stale_since is not None or self.stale
            changed = force or was_stale  # leaving an outage always makes a new version
            config_key = _stat_key(self.config_path)
            if config_key != self._config_key:
                try:
                    if self._load_dnd is not None:
                        self._dnd = tuple(self._load_dnd())
                except Exception as exc:  # a half-edited config: keep the list, retry later
                    self.config_error = f"{type(exc).__name__}: {exc}"
                else:
                    self._config_key = config_key
                    self.config_error = None
                    changed = True
            try:
                conn = self._connection()
                version = None if conn is None else store_sqlite.data_version(conn)
                if version != self._data_version:
                    changed = True
                if changed:
                    if conn is None:
                        snapshot = Snapshot.build(
                            do_not_decrypt=self._dnd, version=next(self._versions)
                        )
                    else:
                        snapshot = load_snapshot(
                            conn,
                            do_not_decrypt=self._dnd,
                            identity_loader=self._identity_loader,
                            version=next(self._versions),
                        )
            except Exception as exc:  # keep the previous snapshot until it goes stale; retry
                self.registry_error = f"{type(exc).__name__}: {exc}"
                self._close()
                if self.stale and self._stale_since is None:
                    self._report_stale()
                return False
            self._data_version = version
            if snapshot is not None:
                self._snapshot = snapshot
                self.reloads += 1
            self.registry_error = None
            if self._stale_since is not None:
                self._report_restored()  # on record before decisions open again
            elif force and self.state_file is not None and self.reloads == 1:
                self._write_state("ok", None, None)
            self._last_ok = time.monotonic()
            self._stale_snapshot = None
        finally:
            self._lock.release()
        if snapshot is None:
            return False
        for callback in list(self._listeners):
            callback(snapshot)
        return True

    # -- reporting an outage ---------------------------------------------------------------
    def _report_stale(self) -> None:
        since = format_utc(datetime.now(UTC))
        self._stale_since = since
        self.outages += 1
        self._write_state("stale", since, self.registry_error)
        self._audit(
            Action.CAPTURE_GAP,
            reason="policy_stale",
            error=self.registry_error,
            stale_after_seconds=self.stale_after,
        )

    def _report_restored(self) -> None:
        since, self._stale_since = self._stale_since, None
        self._write_state("ok", None, None)
        self._audit(Action.POLICY_RESTORED, reason="policy_stale", stale_since=since)

    def _audit(self, action: Action, **fields: Any) -> None:
        if self.audit is None:
            return
        if self.name is not None:
            fields["writer"] = self.name
        try:
            self.audit.append(action, self.actor, **fields)
        except Exception as exc:  # the decision already failed closed; keep polling
            self.report_error = f"audit: {type(exc).__name__}: {exc}"

    def _write_state(self, state: str, since: str | None, error: str | None) -> None:
        if self.state_file is None:
            return
        body = {
            "state": state,
            "stale_since": since,
            "error": error,
            "writer": self.name,
            "pid": os.getpid(),
            "updated": format_utc(datetime.now(UTC)),
        }
        try:
            data = json.dumps(body, sort_keys=True).encode() + b"\n"
            atomic_write(self.state_file, data, mode=0o600)
        except Exception as exc:
            self.report_error = f"state file: {type(exc).__name__}: {exc}"

    # -- running ---------------------------------------------------------------------------
    def start(self) -> SnapshotSource:
        """Poll in a daemon thread until `stop()`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="lbm-policy-snapshot", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        thread = self._thread
        if thread is not None:
            self._stop.set()
            thread.join()
            self._thread = None
        with self._lock:
            self._close()

    async def watch(self) -> None:
        """Poll from asyncio (database reads run in a worker thread) until cancelled."""
        import asyncio  # here: a capture replay polls without it and starts sooner

        self._watching = True
        try:
            while True:
                await asyncio.to_thread(self.refresh)
                await asyncio.sleep(self.interval)
        finally:
            self._watching = False

    def __enter__(self) -> SnapshotSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Immutable policy snapshots and the source that keeps them fresh.

A `Snapshot` holds everything `decide` needs: every authorisation with its history, the identity
map and the do-not-decrypt globs. It never changes; a reload makes a new one and swaps a single
reference, so a daemon's `source.current()` is an attribute read and every decision within one
request sees one consistent policy.

`SnapshotSource` polls `PRAGMA data_version` on its own read connection to registry.sqlite (it
changes whenever another connection commits: a grant, a cancellation, an identity import) and
the config file's stat (for the do-not-decrypt list), every `interval` seconds (default 0.25 s),
so a change is in force within a second. It runs as a daemon thread (`start()`, or a `with`
block), as an asyncio task (`await source.watch()`), or with neither: then `current()` polls
inline at most once per interval. A reload that fails (a half-written config, a locked database)
keeps the previous snapshot (or, for a broken config, the previous do-not-decrypt list while
registry changes still apply) and records `last_error`; it is retried on the next poll.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from appliance.policy import identity
from appliance.policy.model import Authorisation, Channel
from appliance.policy.registry import load_all
from store import sqlite as store_sqlite
from store.paths import DataPaths


class IdentityResolver(Protocol):
    """What the snapshot needs of the identity map (appliance.policy.identity.IdentityMap)."""

    def resolve(self, **identifiers: Any) -> str | None: ...


class NoIdentity:
    """An identity map that resolves nobody (no feed loaded, or no identity module)."""

    def resolve(self, **identifiers: Any) -> str | None:
        return None


def load_identity_map(conn: sqlite3.Connection) -> IdentityResolver:
    """The registry's identity map, read afresh."""
    return cast(IdentityResolver, identity.load_identity(conn))


class CachedIdentityLoader:
    """Reuses the identity map while the identity load is unchanged: a registry change (a grant,
    a cancellation) then reloads only the authorisations, not a map of many leases."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._map: IdentityResolver | None = None

    def __call__(self, conn: sqlite3.Connection) -> IdentityResolver:
        load = identity.current_load(conn)
        key = None if load is None else (load["generation"], load["sha256"], load["source"])
        if self._map is None or key != self._key:
            self._map = load_identity_map(conn)
            self._key = key
        return self._map


def normalise_globs(globs: Iterable[str]) -> tuple[str, ...]:
    return tuple(g.strip().lower().rstrip(".") for g in globs if g and g.strip())


def glob_match(server_name: str, globs: Sequence[str]) -> bool:
    """Case-insensitive glob match; `*.example.org` also matches `example.org` itself (erring
    toward not decrypting)."""
    name = server_name.strip().lower().rstrip(".")
    if not name:
        return False
    for pattern in globs:
        if fnmatch.fnmatchcase(name, pattern):
            return True
        if pattern.startswith("*.") and name == pattern[2:]:
            return True
    return False


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the policy (immutable; `Snapshot.build(...)` takes iterables)."""

    authorisations: tuple[Authorisation, ...] = ()
    identity: IdentityResolver = field(default_factory=NoIdentity)
    do_not_decrypt: tuple[str, ...] = ()
    version: int = 0
    _by_subject: dict[str, tuple[Authorisation, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_subject: dict[str, list[Authorisation]] = {}
        for auth in self.authorisations:
            by_subject.setdefault(auth.subject, []).append(auth)
        object.__setattr__(self, "_by_subject", {k: tuple(v) for k, v in by_subject.items()})
        object.__setattr__(self, "do_not_decrypt", normalise_globs(self.do_not_decrypt))

    @classmethod
    def build(
        cls,
        authorisations: Iterable[Authorisation] = (),
        identity: IdentityResolver | None = None,
        do_not_decrypt: Iterable[str] = (),
        version: int = 0,
    ) -> Snapshot:
        return cls(
            tuple(authorisations),
            identity if identity is not None else NoIdentity(),
            tuple(do_not_decrypt),
            version,
        )

    def for_subject(self, principal: str) -> tuple[Authorisation, ...]:
        return self._by_subject.get(principal, ())

    def subjects_at(self, at: datetime, channel: Channel | str | None = None) -> frozenset[str]:
        """Principals with an active authorisation at `at` (on `channel`, if given): lets a
        channel skip per-packet work when nobody is a subject."""
        chan = Channel(channel) if channel is not None else None
        return frozenset(
            a.subject
            for a in self.authorisations
            if (chan is None or chan in a.channels) and a.active_at(at)
        )

    def get(self, ref: str) -> Authorisation | None:
        return next((a for a in self.authorisations if a.ref == ref), None)

    def is_do_not_decrypt(self, server_name: str) -> bool:
        return glob_match(server_name, self.do_not_decrypt)

    def resolve(self, **identifiers: Any) -> str | None:
        """The identity map's answer (username=, email=, ip= with at=)."""
        return self.identity.resolve(**identifiers)


def load_snapshot(
    conn: sqlite3.Connection,
    *,
    do_not_decrypt: Iterable[str] = (),
    identity_loader: Callable[[sqlite3.Connection], IdentityResolver] | None = None,
    version: int = 0,
) -> Snapshot:
    """Authorisations and identity map read in one transaction: one consistent view."""
    loader = identity_loader or load_identity_map
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        auths = load_all(conn)
        identity = loader(conn)
    finally:
        if own:
            conn.execute("COMMIT")
    return Snapshot.build(auths, identity, do_not_decrypt, version)


def _stat_key(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class SnapshotSource:
    """Keeps a current `Snapshot` of one data directory, reloaded on change."""

    def __init__(
        self,
        paths: DataPaths,
        *,
        config_path: Path | None = None,
        load_do_not_decrypt: Callable[[], Sequence[str]] | None = None,
        do_not_decrypt: Sequence[str] = (),
        identity_loader: Callable[[sqlite3.Connection], IdentityResolver] | None = None,
        interval: float = 0.25,
    ) -> None:
        self.paths = paths
        self.config_path = config_path
        self.interval = interval
        self.config_error: str | None = None
        self.registry_error: str | None = None
        self.reloads = 0
        self._load_dnd = load_do_not_decrypt
        self._dnd: tuple[str, ...] = tuple(do_not_decrypt)
        self._identity_loader = identity_loader or CachedIdentityLoader()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_inode: int | None = None
        self._data_version: int | None = None
        self._config_key = _stat_key(config_path)
        self._last_poll = 0.0
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

    def current(self) -> Snapshot:
        """The current snapshot. Cheap; without a watcher it polls at most once per interval."""
        if (
            self._thread is None
            and not self._watching
            and time.monotonic() - self._last_poll >= self.interval
        ):
            self.refresh()
        return self._snapshot

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
        if self._conn is not None and self._conn_inode != key[2]:
            self._close()  # the registry was replaced (restored from a backup)
        if self._conn is None:
            self._conn = store_sqlite.connect(path, readonly=True)
            self._conn_inode = key[2]
            self._data_version = None
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._data_version = None

    def refresh(self, *, force: bool = False) -> bool:
        """Reload if the registry or the config changed (or `force`). True if reloaded."""
        self._lock.acquire()
        try:
            self._last_poll = time.monotonic()
            changed = force
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
                if not changed:
                    return False
                if conn is None:
                    snapshot = Snapshot.build(
                        do_not_decrypt=self._dnd, version=self._snapshot.version + 1
                    )
                else:
                    snapshot = load_snapshot(
                        conn,
                        do_not_decrypt=self._dnd,
                        identity_loader=self._identity_loader,
                        version=self._snapshot.version + 1,
                    )
            except Exception as exc:  # keep serving the previous snapshot; retry next poll
                self.registry_error = f"{type(exc).__name__}: {exc}"
                self._close()
                return False
            self._data_version = version
            self._snapshot = snapshot
            self.reloads += 1
            self.registry_error = None
        finally:
            self._lock.release()
        for callback in list(self._listeners):
            callback(snapshot)
        return True

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

"""The identity map's storage and importer: which principal a proxy username, an email address
or an IP address at an instant belongs to, as loaded from the identity feed.

One importer (`import_feed`, behind `lbm identity import` and the housekeeping daemon's
`import_if_changed`) loads a feed (parsed by `identity_feed`) into the `identity_*` tables of
registry.sqlite, replacing the previous load in one transaction, with one audit entry per load
(file, SHA-256, row counts). Daemons only read: `load_identity(conn)` builds an immutable
`IdentityMap` (`identity_map`, pure: lookups and conflict rules without SQL) whose `resolve()`
answers with a principal id or None. An identifier mapped to two principals (a username, an
address, or overlapping IP leases during the overlap) resolves to nobody and is reported as a
conflict.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.policy.identity_feed import (
    MAX_FEED_BYTES,
    FeedError,
    FeedRow,
    normalise_email,
    normalise_ip,
    read_feed,
)
from appliance.policy.identity_map import EMPTY, Conflict, IdentityMap, Lease
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import format_utc
from store.safefile import UnsafeFileError, read_regular

__all__ = [
    "EMPTY",
    "Conflict",
    "FeedError",
    "IdentityMap",
    "ImportReport",
    "Lease",
    "current_load",
    "ensure_schema",
    "generation",
    "import_feed",
    "import_if_changed",
    "load_identity",
    "normalise_email",
    "normalise_ip",
    "stored_problems",
]

MAX_STORED_PROBLEMS = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_rows (
    line INTEGER NOT NULL,
    principal TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    valid_from INTEGER,
    valid_to INTEGER
);
CREATE TABLE IF NOT EXISTS identity_load (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    loaded_at TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    format TEXT NOT NULL,
    loaded INTEGER NOT NULL,
    bad INTEGER NOT NULL,
    conflicts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_problems (
    seq INTEGER PRIMARY KEY,
    message TEXT NOT NULL
);
"""


# -- storage --------------------------------------------------------------------------------
def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
        "('identity_rows', 'identity_load')"
    ).fetchone()
    return int(row[0]) == 2


def current_load(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The current load's facts (source, sha256, generation, counts), or None."""
    if not _has_tables(conn):
        return None
    row = conn.execute("SELECT * FROM identity_load WHERE id = 1").fetchone()
    return dict(row) if row is not None else None


def generation(conn: sqlite3.Connection) -> int:
    """Changes with every load: a cheap check for whether a cached map is stale."""
    load = current_load(conn)
    return int(load["generation"]) if load else 0


def stored_problems(conn: sqlite3.Connection) -> list[str]:
    """Bad-row and conflict messages of the current load (at most MAX_STORED_PROBLEMS)."""
    if not _has_tables(conn):
        return []
    return [r[0] for r in conn.execute("SELECT message FROM identity_problems ORDER BY seq")]


def load_identity(conn: sqlite3.Connection) -> IdentityMap:
    """Build the map from the current load, read in one transaction (never half a load)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        if not _has_tables(conn):
            return EMPTY
        load = conn.execute("SELECT generation, source FROM identity_load WHERE id = 1").fetchone()
        rows = [
            FeedRow(r[0], r[1], r[2], r[3], r[4], r[5])
            for r in conn.execute(
                "SELECT line, principal, kind, value, valid_from, valid_to FROM identity_rows "
                "ORDER BY rowid"
            )
        ]
    finally:
        if own:
            conn.execute("COMMIT")
    if load is None:
        return EMPTY
    return IdentityMap.build(rows, generation=int(load[0]), source=str(load[1]))


@dataclass(frozen=True)
class ImportReport:
    file: str
    sha256: str
    format: str
    loaded: int
    principals: int
    bad: tuple[str, ...]
    conflicts: tuple[str, ...]
    generation: int

    def counts(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "loaded": self.loaded,
            "bad": len(self.bad),
            "conflicts": len(self.conflicts),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.counts(),
            "format": self.format,
            "principals": self.principals,
            "generation": self.generation,
            "bad_rows": list(self.bad),
            "conflict_reports": list(self.conflicts),
        }


def import_feed(
    conn: sqlite3.Connection, path: Path, *, audit: AuditLog, actor: str
) -> ImportReport:
    """Replace the identity map with the feed at `path`, atomically, with one audit entry.

    Raises FeedError (and changes nothing) if the file is unreadable, its header is wrong, a
    JSON array is malformed, or no row is valid."""
    path = Path(path).absolute()
    parsed = read_feed(path)
    source = str(path)
    bad = tuple(b.describe(source) for b in parsed.bad)
    if not parsed.rows:
        detail = f" ({len(bad)} bad rows, first: {bad[0]})" if bad else ""
        raise FeedError(f"{path}: no valid rows; the previous identity map is kept{detail}")
    built = IdentityMap.build(parsed.rows)
    conflicts = tuple(c.describe(source) for c in built.conflicts)
    now = format_utc(audit.clock.now())
    ensure_schema(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        gen = (
            int(
                conn.execute("SELECT coalesce(max(generation), 0) FROM identity_load").fetchone()[0]
            )
            + 1
        )
        conn.execute("DELETE FROM identity_rows")
        conn.execute("DELETE FROM identity_problems")
        conn.executemany(
            "INSERT INTO identity_rows (line, principal, kind, value, valid_from, valid_to) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.line, r.principal, r.kind, r.value, r.valid_from, r.valid_to) for r in parsed.rows],
        )
        conn.executemany(
            "INSERT INTO identity_problems (message) VALUES (?)",
            [(m,) for m in (bad + conflicts)[:MAX_STORED_PROBLEMS]],
        )
        conn.execute(
            "INSERT OR REPLACE INTO identity_load (id, generation, loaded_at, source, sha256, "
            "format, loaded, bad, conflicts) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                gen,
                now,
                source,
                parsed.sha256,
                parsed.format,
                len(parsed.rows),
                len(bad),
                len(conflicts),
            ),
        )
        report = ImportReport(
            source,
            parsed.sha256,
            parsed.format,
            len(parsed.rows),
            len(built.principals),
            bad,
            conflicts,
            gen,
        )
        # Audited before the commit: a load is never visible without its audit entry.
        audit.append(Action.IDENTITY_IMPORT, actor, **report.counts())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return report


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def import_if_changed(
    paths: Any,
    feed_path: Path,
    state: dict[str, Any],
    *,
    audit: AuditLog,
    actor: str,
    settle_seconds: float = 2.0,
) -> dict[str, Any] | None:
    """Re-import `feed_path` when its content changed since the current load; for the
    housekeeping daemon's every pass. `paths` is the data directory's DataPaths; `state` is the
    caller's dict, kept between passes.

    Returns the load's counts when it imported, else None. A file modified less than
    `settle_seconds` ago waits for the next pass (feeds should be written to a temporary name
    and renamed; this catches writers that do not). A failure (missing file, bad feed) raises
    FeedError once per change of the file, then stays quiet until the file changes again."""
    feed_path = Path(feed_path).absolute()
    signature = _signature(feed_path)
    if signature is None:
        if state.get("missing") == str(feed_path):
            return None
        state["missing"] = str(feed_path)
        raise FeedError(f"{feed_path}: identity feed not found; the previous map is kept")
    state.pop("missing", None)
    if state.get("signature") == signature and state.get("path") == str(feed_path):
        return None
    if time.time() - signature[2] / 1e9 < settle_seconds:
        return None
    state["signature"], state["path"] = signature, str(feed_path)
    conn = store_sqlite.connect(paths.registry)
    try:
        load = current_load(conn)
        if load is not None and load["source"] == str(feed_path):
            try:
                data = read_regular(feed_path, "identity feed", MAX_FEED_BYTES)
                digest = hashlib.sha256(data).hexdigest()
            except UnsafeFileError:
                digest = None  # the import below reports it
            if digest == load["sha256"]:
                return None
        return import_feed(conn, feed_path, audit=audit, actor=actor).counts()
    except FeedError:
        raise  # reported once; retried when the file changes
    except BaseException:
        state.pop("signature", None)  # a transient failure (busy database...): retry next pass
        raise
    finally:
        conn.close()

"""The identity map: which principal a proxy username, an email address or an IP address at an
instant belongs to.

One importer (`import_feed`, behind `lbm identity import` and the housekeeping daemon's
`import_if_changed`) loads a feed (parsed by `identity_feed`) into the `identity_*` tables of
registry.sqlite, replacing the previous load in one transaction, with one audit entry per load
(file, SHA-256, row counts). Daemons only read: `load_identity(conn)` builds an immutable
`IdentityMap` whose `resolve()` answers with a principal id or None. An identifier mapped to two
principals (a username, an address, or overlapping IP leases during the overlap) resolves to
nobody and is reported as a conflict.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.policy.identity_feed import (
    MAX_FEED_BYTES,
    OPEN_END,
    FeedError,
    FeedRow,
    from_us,
    normalise_email,
    normalise_ip,
    read_feed,
    to_us,
)
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import format_utc
from store.safefile import UnsafeFileError, read_regular

__all__ = [
    "Conflict",
    "FeedError",
    "IdentityMap",
    "ImportReport",
    "Lease",
    "import_feed",
    "import_if_changed",
    "load_identity",
    "normalise_email",
    "normalise_ip",
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


@dataclass(frozen=True)
class Lease:
    ip: str
    principal: str
    valid_from: datetime
    valid_to: datetime | None  # None: open
    line: int

    def state(self, now: datetime) -> str:
        if now < self.valid_from:
            return "future"
        if self.valid_to is not None and now >= self.valid_to:
            return "past"
        return "current"


@dataclass(frozen=True)
class Conflict:
    """An identifier mapped to more than one principal; it resolves to nobody (for an IP, during
    `window`). `lines` are the feed lines of the rows involved, in order."""

    kind: str  # "username", "email" (addresses and aliases) or "ip"
    value: str
    principals: tuple[str, ...]
    lines: tuple[int, ...]
    window: tuple[datetime, datetime | None] | None = None

    def describe(self, source: str) -> str:
        others = ", ".join(
            f"{p} (line {n})" for p, n in zip(self.principals[:-1], self.lines[:-1], strict=True)
        )
        head = (
            f"{source}:{self.lines[-1]}: conflict: {self.kind} {self.value} of "
            f"{self.principals[-1]} is also mapped to {others}"
        )
        if self.window is None:
            return head + "; it resolves to nobody"
        start, end = self.window
        until = format_utc(end) if end is not None else "open end"
        return f"{head} from {format_utc(start)} to {until}; it resolves to nobody then"


@dataclass(frozen=True)
class _Windows:
    """An IP's sorted, disjoint [start, end) windows with one owner each (µs since epoch)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[str, ...]

    def at(self, instant: int) -> str | None:
        i = bisect_right(self.starts, instant) - 1
        if i >= 0 and instant < self.ends[i]:
            return self.owners[i]
        return None


def _windows_and_conflicts(ip: str, rows: list[FeedRow]) -> tuple[_Windows, list[Conflict]]:
    """Sweep the leases of one IP: owned windows where exactly one principal holds it, and one
    conflict per overlapping pair of leases of different principals."""
    events: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        assert row.valid_from is not None and row.valid_to is not None
        events[row.valid_from].append((1, row.principal))
        if row.valid_to != OPEN_END:
            events[row.valid_to].append((-1, row.principal))
    active: Counter[str] = Counter()
    segments: list[tuple[int, int, str]] = []
    times = sorted(events)
    for i, instant in enumerate(times):
        for delta, principal in events[instant]:
            active[principal] += delta
            if active[principal] == 0:
                del active[principal]
        end = times[i + 1] if i + 1 < len(times) else OPEN_END
        if len(active) == 1:
            owner = next(iter(active))
            if segments and segments[-1][1] == instant and segments[-1][2] == owner:
                segments[-1] = (segments[-1][0], end, owner)
            else:
                segments.append((instant, end, owner))
    conflicts: list[Conflict] = []
    ordered = sorted(rows, key=lambda r: (r.valid_from or 0, r.line))
    open_rows: list[FeedRow] = []
    for row in ordered:
        start = row.valid_from or 0
        open_rows = [r for r in open_rows if (r.valid_to or 0) > start]
        for other in open_rows:
            if other.principal != row.principal:
                first, second = sorted((other, row), key=lambda r: r.line)
                end = min(other.valid_to or OPEN_END, row.valid_to or OPEN_END)
                conflicts.append(
                    Conflict(
                        "ip",
                        ip,
                        (first.principal, second.principal),
                        (first.line, second.line),
                        (from_us(start), None if end == OPEN_END else from_us(end)),
                    )
                )
        open_rows.append(row)
    windows = _Windows(
        tuple(s[0] for s in segments), tuple(s[1] for s in segments), tuple(s[2] for s in segments)
    )
    return windows, conflicts


def _instant(at: datetime | float | int) -> int:
    if isinstance(at, datetime):
        return to_us(at)
    return round(at * 1_000_000)


@dataclass(frozen=True, eq=False)
class IdentityMap:
    """An immutable identity map. Build it with `IdentityMap.build(rows)` or `load_identity`."""

    principals: frozenset[str]
    rows: tuple[FeedRow, ...]
    conflicts: tuple[Conflict, ...]
    generation: int = 0
    source: str | None = None
    _usernames: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    _emails: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    _ips: Mapping[str, _Windows] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, rows: Iterable[FeedRow], *, generation: int = 0, source: str | None = None
    ) -> IdentityMap:
        rows = tuple(rows)
        principals = frozenset(r.principal for r in rows)
        names: dict[str, dict[str, list[FeedRow]]] = {"username": {}, "email": {}}
        leases: dict[str, list[FeedRow]] = defaultdict(list)
        for row in rows:
            if row.kind == "username":
                names["username"].setdefault(row.value, []).append(row)
            elif row.kind in ("email", "alias"):
                names["email"].setdefault(row.value, []).append(row)
            elif row.kind == "ip":
                leases[row.value].append(row)
        conflicts: list[Conflict] = []
        resolved: dict[str, dict[str, str | None]] = {"username": {}, "email": {}}
        for kind, table in names.items():
            for value, found in table.items():
                owners = list(dict.fromkeys(r.principal for r in found))
                if len(owners) == 1:
                    resolved[kind][value] = owners[0]
                    continue
                resolved[kind][value] = None
                firsts = [next(r for r in found if r.principal == p) for p in owners]
                conflicts.append(
                    Conflict(kind, value, tuple(owners), tuple(r.line for r in firsts))
                )
        ips: dict[str, _Windows] = {}
        for ip, ip_rows in leases.items():
            ips[ip], ip_conflicts = _windows_and_conflicts(ip, ip_rows)
            conflicts.extend(ip_conflicts)
        conflicts.sort(key=lambda c: (c.lines[-1], c.lines))
        return cls(
            principals,
            rows,
            tuple(conflicts),
            generation,
            source,
            MappingProxyType(resolved["username"]),
            MappingProxyType(resolved["email"]),
            MappingProxyType(ips),
        )

    # -- resolution ------------------------------------------------------------------------
    def resolve(
        self,
        *,
        username: str | None = None,
        email: str | None = None,
        ip: str | None = None,
        at: datetime | None = None,
    ) -> str | None:
        """The principal an identifier belongs to, or None (unknown, conflicting, or an IP
        outside every lease). Exactly one identifier per call; `ip` needs `at`."""
        given = (username is not None) + (email is not None) + (ip is not None)
        if given != 1:
            raise ValueError("resolve() takes exactly one of username, email, ip")
        if username is not None:
            return self._usernames.get(username)
        if email is not None:
            return self._emails.get(normalise_email(email))
        if at is None:
            raise ValueError("resolve(ip=...) needs at=")
        return self.resolve_ip(ip, at)  # type: ignore[arg-type]

    def _windows(self, ip: str) -> _Windows | None:
        found = self._ips.get(ip)
        if found is None:
            try:
                canonical = normalise_ip(ip)
            except ValueError:
                return None
            found = self._ips.get(canonical)
        return found

    def resolve_ip(self, ip: str, at: datetime | float | int) -> str | None:
        """The principal holding `ip` at `at` (a datetime, or POSIX seconds), or None."""
        windows = self._windows(ip)
        return windows.at(_instant(at)) if windows is not None else None

    def resolve_ip_many(
        self, ips: Sequence[str], ats: Sequence[datetime | float | int]
    ) -> list[str | None]:
        """`resolve_ip` over parallel sequences (the capture path's batches)."""
        if len(ips) != len(ats):
            raise ValueError("resolve_ip_many: ips and ats differ in length")
        cache: dict[str, _Windows | None] = {}
        out: list[str | None] = []
        for ip, at in zip(ips, ats, strict=True):
            if ip in cache:
                windows = cache[ip]
            else:
                windows = cache[ip] = self._windows(ip)
            out.append(windows.at(_instant(at)) if windows is not None else None)
        return out

    # -- description -----------------------------------------------------------------------
    def describe(self, principal: str) -> dict[str, Any] | None:
        """A principal's identifiers and leases (with the feed lines), or None if unknown."""
        if principal not in self.principals:
            return None
        mine = [r for r in self.rows if r.principal == principal]
        conflicted = {
            (c.kind, c.value)
            for c in self.conflicts
            if principal in c.principals and c.kind != "ip"
        }
        out: dict[str, Any] = {
            "principal": principal,
            "usernames": [],
            "emails": [],
            "aliases": [],
            "leases": [],
        }
        plural = {"username": "usernames", "email": "emails", "alias": "aliases"}
        for row in mine:
            if row.kind in plural:
                kind = "username" if row.kind == "username" else "email"
                out[plural[row.kind]].append(
                    {
                        "value": row.value,
                        "line": row.line,
                        "conflict": (kind, row.value) in conflicted,
                    }
                )
            elif row.kind == "ip":
                assert row.valid_from is not None and row.valid_to is not None
                out["leases"].append(
                    Lease(
                        row.value,
                        principal,
                        from_us(row.valid_from),
                        None if row.valid_to == OPEN_END else from_us(row.valid_to),
                        row.line,
                    )
                )
        out["conflicts"] = [c for c in self.conflicts if principal in c.principals]
        return out


EMPTY = IdentityMap.build(())


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

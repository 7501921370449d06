"""Evidence holds and retention review decisions: two append-only tables in registry.sqlite.

- `evidence_holds`: one row per `lbm archive hold` / `lbm archive release` (ref, kind, time,
  login, investigator, reason). REF is held while its latest row is a hold. A held REF's archive
  is never removed by retention, nor a metadata partition holding one of REF's rows.
- `retention_reviews`: one row per `lbm retention review` decision (`retain` or `delete`). The
  latest decision counts: `retain` keeps the archive until `[retention] review_days` after it,
  `delete` makes an ended authorisation's archive due at once (a hold still blocks it).

Rows are never updated or deleted (triggers refuse it), so the history of every hold and
decision stays readable for the scrutiny report. Reasons are the officer's words; they are
stored and audited as given (they describe the decision, never monitored content).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from store.clock import format_utc, parse_utc

SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_holds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL COLLATE NOCASE,
    kind TEXT NOT NULL CHECK (kind IN ('hold', 'release')),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    investigator TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retention_reviews (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL COLLATE NOCASE,
    decision TEXT NOT NULL CHECK (decision IN ('retain', 'delete')),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    investigator TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS evidence_holds_no_update BEFORE UPDATE ON evidence_holds
BEGIN SELECT RAISE(ABORT, 'evidence_holds is append-only'); END;
CREATE TRIGGER IF NOT EXISTS evidence_holds_no_delete BEFORE DELETE ON evidence_holds
BEGIN SELECT RAISE(ABORT, 'evidence_holds is append-only'); END;
CREATE TRIGGER IF NOT EXISTS retention_reviews_no_update BEFORE UPDATE ON retention_reviews
BEGIN SELECT RAISE(ABORT, 'retention_reviews is append-only'); END;
CREATE TRIGGER IF NOT EXISTS retention_reviews_no_delete BEFORE DELETE ON retention_reviews
BEGIN SELECT RAISE(ABORT, 'retention_reviews is append-only'); END;
"""

MAX_REASON = 2000
Decision = Literal["retain", "delete"]
DECISIONS: tuple[Decision, ...] = ("retain", "delete")


class HoldError(Exception):
    """A hold, release or review that cannot be recorded; the message says why."""


@dataclass(frozen=True)
class Event:
    """One row of either table: `kind` is hold/release, or the review decision."""

    ref: str
    kind: str
    at: datetime
    actor: str
    investigator: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "at": format_utc(self.at),
            "actor": self.actor,
            "investigator": self.investigator,
            "reason": self.reason,
        }


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _has(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
    ).fetchone()
    return row is not None


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise HoldError("--reason must say why (it is audited)")
    if len(text) > MAX_REASON:
        raise HoldError(f"--reason is {len(text)} characters; at most {MAX_REASON}")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise HoldError("--reason must be one line of text (no control characters)")
    return text


def _rows(conn: sqlite3.Connection, table: str, column: str) -> list[Event]:
    if not _has(conn, table):
        return []
    return [
        Event(r[0], r[1], parse_utc(r[2]), r[3], r[4], r[5])
        for r in conn.execute(
            f"SELECT ref, {column}, at, actor, investigator, reason FROM {table} ORDER BY seq"
        )
    ]


def hold_events(conn: sqlite3.Connection) -> list[Event]:
    """Every hold and release, oldest first."""
    return _rows(conn, "evidence_holds", "kind")


def review_events(conn: sqlite3.Connection) -> list[Event]:
    """Every retention review decision, oldest first."""
    return _rows(conn, "retention_reviews", "decision")


def active_holds(conn: sqlite3.Connection) -> dict[str, Event]:
    """REF -> the hold in force on it (its latest row is a hold)."""
    latest: dict[str, Event] = {}
    for event in hold_events(conn):
        latest[event.ref] = event
    return {ref: e for ref, e in latest.items() if e.kind == "hold"}


def latest_reviews(conn: sqlite3.Connection) -> dict[str, Event]:
    """REF -> its latest retention review decision."""
    latest: dict[str, Event] = {}
    for event in review_events(conn):
        latest[event.ref] = event
    return latest


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (check, then insert), so two processes cannot both hold."""
    ensure_schema(conn)  # executescript commits: before the transaction
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, table: str, column: str, event: Event) -> None:
    conn.execute(
        f"INSERT INTO {table}(ref, {column}, at, actor, investigator, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (event.ref, event.kind, format_utc(event.at), event.actor, event.investigator,
         event.reason),
    )  # fmt: skip


def place_hold(conn: sqlite3.Connection, event: Event) -> None:
    """Record a hold on `event.ref`; refused when REF is held already."""
    with _immediate(conn):
        if event.ref in active_holds(conn):
            raise HoldError(f"{event.ref} is already held (lbm archive release it first)")
        _insert(conn, "evidence_holds", "kind", event)


def release_hold(conn: sqlite3.Connection, event: Event) -> Event:
    """Record the release of the hold on `event.ref`; returns the hold released."""
    with _immediate(conn):
        held = active_holds(conn).get(event.ref)
        if held is None:
            raise HoldError(f"{event.ref} is not held")
        _insert(conn, "evidence_holds", "kind", event)
    return held


def record_review(conn: sqlite3.Connection, event: Event) -> None:
    if event.kind not in DECISIONS:
        raise HoldError(f"--decision {event.kind!r}: must be retain or delete")
    with _immediate(conn):
        _insert(conn, "retention_reviews", "decision", event)

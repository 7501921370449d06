"""The authorisation register's storage in registry.sqlite: schema, rows in, rows out. No rules.

Tables (made by `ensure_schema`, which `lbm init` calls):

- `authorisations`: one row per authorisation as granted (application, statements, the officer as
  the officer register had them at the grant, start, the authorisation's age public key). Never
  updated or deleted (triggers refuse it).
- `auth_history`: every event (grant, urgent, ratify, renew, review, cancel, assign, rewrap),
  with the computed effective expiry where the event sets one. Append-only (triggers refuse
  UPDATE and DELETE), so nothing past is rewritten and `decide` can answer for past instants.
- `auth_assignments`: which investigators are assigned to which authorisation.
- `auth_signatures`: the signed bytes (a CA1 application or a ratify/renew/review statement) and
  the officer's detached SSHSIG signature of an act, kept so a reviewer can verify them alone.
  Append-only.
- `officer_register` (see `officers_store`).

Rows are written with named columns only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from appliance.policy import officers_store
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    Channel,
    EventKind,
    HistoryEvent,
    Officer,
    Purpose,
    Rank,
)
from store import investigators as investigators_table
from store.clock import format_utc, parse_utc

SCHEMA = """
CREATE TABLE IF NOT EXISTS authorisations (
    ref TEXT PRIMARY KEY COLLATE NOCASE,
    subject TEXT NOT NULL,
    case_type TEXT NOT NULL,
    purposes TEXT NOT NULL,
    channels TEXT NOT NULL,
    officer TEXT NOT NULL,
    officer_name TEXT NOT NULL,
    officer_role TEXT NOT NULL,
    officer_rank TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    necessity TEXT NOT NULL,
    proportionality TEXT NOT NULL,
    collateral TEXT NOT NULL,
    ripa_considered INTEGER NOT NULL,
    ripa_note TEXT NOT NULL,
    start TEXT NOT NULL,
    investigators TEXT NOT NULL,
    open_do_not_decrypt INTEGER NOT NULL,
    retention_days INTEGER,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS authorisations_subject ON authorisations(subject);
CREATE TABLE IF NOT EXISTS auth_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL REFERENCES authorisations(ref),
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    officer TEXT,
    text TEXT NOT NULL DEFAULT '',
    expiry TEXT,
    investigators TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS auth_history_ref ON auth_history(ref, seq);
CREATE TABLE IF NOT EXISTS auth_assignments (
    ref TEXT NOT NULL REFERENCES authorisations(ref),
    investigator TEXT NOT NULL,
    assigned_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (ref, investigator)
);
CREATE TABLE IF NOT EXISTS auth_signatures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL REFERENCES authorisations(ref),
    kind TEXT NOT NULL,
    officer TEXT NOT NULL,
    at TEXT NOT NULL,
    signed_bytes BLOB NOT NULL,
    signature BLOB NOT NULL,
    public_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS auth_signatures_no_update BEFORE UPDATE ON auth_signatures
BEGIN SELECT RAISE(ABORT, 'auth_signatures is append-only'); END;
CREATE TRIGGER IF NOT EXISTS auth_signatures_no_delete BEFORE DELETE ON auth_signatures
BEGIN SELECT RAISE(ABORT, 'auth_signatures is append-only'); END;
CREATE TRIGGER IF NOT EXISTS auth_history_no_update BEFORE UPDATE ON auth_history
BEGIN SELECT RAISE(ABORT, 'auth_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS auth_history_no_delete BEFORE DELETE ON auth_history
BEGIN SELECT RAISE(ABORT, 'auth_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS authorisations_no_update BEFORE UPDATE ON authorisations
BEGIN SELECT RAISE(ABORT, 'authorisations are never rewritten; append history'); END;
CREATE TRIGGER IF NOT EXISTS authorisations_no_delete BEFORE DELETE ON authorisations
BEGIN SELECT RAISE(ABORT, 'authorisations are never deleted'); END;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    investigators_table.ensure_schema(conn)
    officers_store.ensure_schema(conn)


# -- reading -----------------------------------------------------------------------------------
def officer_from_json(raw: str | None) -> Officer | None:
    if not raw:
        return None
    data = json.loads(raw)
    return Officer(data["principal"], data["name"], data["role"], Rank(data["rank"]))


def _event(row: sqlite3.Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        ref=row["ref"],
        kind=EventKind(row["kind"]),
        at=parse_utc(row["at"]),
        actor=row["actor"],
        officer=officer_from_json(row["officer"]),
        text=row["text"],
        expiry=parse_utc(row["expiry"]) if row["expiry"] else None,
        investigators=tuple(json.loads(row["investigators"])),
    )


def _authorisation(row: sqlite3.Row, events: Sequence[HistoryEvent]) -> Authorisation:
    app = Application(
        ref=row["ref"],
        subject=row["subject"],
        case_type=CaseType(row["case_type"]),
        purposes=tuple(Purpose(p) for p in json.loads(row["purposes"])),
        channels=tuple(Channel(c) for c in json.loads(row["channels"])),
        officer=Officer(
            row["officer"], row["officer_name"], row["officer_role"], Rank(row["officer_rank"])
        ),
        necessity=row["necessity"],
        proportionality=row["proportionality"],
        collateral=row["collateral"],
        ripa_considered=bool(row["ripa_considered"]),
        ripa_note=row["ripa_note"],
        start=parse_utc(row["start"]),
        investigators=tuple(json.loads(row["investigators"])),
        urgent=bool(row["urgent"]),
        open_do_not_decrypt=bool(row["open_do_not_decrypt"]),
        retention_days=row["retention_days"],
    )
    return Authorisation(app, row["public_key"], parse_utc(row["created_at"]), tuple(events))


def _has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='auth_history'"
    ).fetchone()
    return row is not None


def load_all(conn: sqlite3.Connection) -> tuple[Authorisation, ...]:
    """Every authorisation with its history, in one read transaction (a consistent view)."""
    if not _has_schema(conn):
        return ()
    in_tx = conn.in_transaction
    if not in_tx:
        conn.execute("BEGIN")
    try:
        events: dict[str, list[HistoryEvent]] = {}
        for row in conn.execute("SELECT * FROM auth_history ORDER BY seq"):
            events.setdefault(row["ref"], []).append(_event(row))
        rows = conn.execute("SELECT * FROM authorisations ORDER BY start, ref").fetchall()
    finally:
        if not in_tx:
            conn.execute("COMMIT")
    return tuple(_authorisation(r, events.get(r["ref"], [])) for r in rows)


def load_one(conn: sqlite3.Connection, ref: str) -> Authorisation | None:
    if not _has_schema(conn):
        return None
    row = conn.execute("SELECT * FROM authorisations WHERE ref = ?", (ref,)).fetchone()
    if row is None:
        return None
    events = [
        _event(r)
        for r in conn.execute(
            "SELECT * FROM auth_history WHERE ref = ? ORDER BY seq", (row["ref"],)
        )
    ]
    return _authorisation(row, events)


def assignees(conn: sqlite3.Connection, ref: str) -> tuple[str, ...]:
    """Investigators assigned to `ref` (registry fact; removed investigators included)."""
    rows = conn.execute(
        "SELECT investigator FROM auth_assignments WHERE ref = ? "
        "ORDER BY assigned_at, investigator",
        (ref,),
    ).fetchall()
    return tuple(r["investigator"] for r in rows)


# -- writing (inside the caller's transaction) ---------------------------------------------------
def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    columns = ", ".join(row)
    names = ", ".join(":" + k for k in row)
    cur = conn.execute(f"INSERT INTO {table}({columns}) VALUES ({names})", row)
    return int(cur.lastrowid or 0)


def insert_authorisation(
    conn: sqlite3.Connection, app: Application, *, public_key: str, now: datetime, actor: str
) -> None:
    officer = app.officer
    _insert(
        conn,
        "authorisations",
        {
            "ref": app.ref,
            "subject": app.subject,
            "case_type": app.case_type.value,
            "purposes": json.dumps([p.value for p in app.purposes]),
            "channels": json.dumps([c.value for c in app.channels]),
            "officer": officer.principal,
            "officer_name": officer.name,
            "officer_role": officer.role,
            "officer_rank": officer.rank.value,
            "urgent": int(app.urgent),
            "necessity": app.necessity,
            "proportionality": app.proportionality,
            "collateral": app.collateral,
            "ripa_considered": int(app.ripa_considered),
            "ripa_note": app.ripa_note,
            "start": format_utc(app.start),
            "investigators": json.dumps(list(app.investigators)),
            "open_do_not_decrypt": int(app.open_do_not_decrypt),
            "retention_days": app.retention_days,
            "public_key": public_key,
            "created_at": format_utc(now),
            "actor": actor,
        },
    )


def insert_assignment(
    conn: sqlite3.Connection, ref: str, investigator: str, now: datetime, actor: str
) -> None:
    _insert(
        conn,
        "auth_assignments",
        {"ref": ref, "investigator": investigator, "assigned_at": format_utc(now), "actor": actor},
    )


def append_history(
    conn: sqlite3.Connection,
    ref: str,
    kind: EventKind,
    at: datetime,
    actor: str,
    *,
    officer: Officer | None = None,
    text: str = "",
    expiry: datetime | None = None,
    investigators: Sequence[str] = (),
) -> int:
    return _insert(
        conn,
        "auth_history",
        {
            "ref": ref,
            "kind": kind.value,
            "at": format_utc(at),
            "actor": actor,
            "officer": json.dumps(officer.as_dict()) if officer else None,
            "text": text,
            "expiry": format_utc(expiry) if expiry else None,
            "investigators": json.dumps(list(investigators)),
        },
    )


def insert_signature(
    conn: sqlite3.Connection,
    ref: str,
    kind: str,
    officer: str,
    at: datetime,
    signed_bytes: bytes,
    signature: bytes,
    public_key: str,
    key_fingerprint: str,
) -> None:
    _insert(
        conn,
        "auth_signatures",
        {
            "ref": ref,
            "kind": kind,
            "officer": officer,
            "at": format_utc(at),
            "signed_bytes": signed_bytes,
            "signature": signature,
            "public_key": public_key,
            "key_fingerprint": key_fingerprint,
        },
    )


def signatures(conn: sqlite3.Connection, ref: str) -> list[sqlite3.Row]:
    """The signed acts of `ref`, oldest first."""
    return conn.execute(
        "SELECT * FROM auth_signatures WHERE ref = ? ORDER BY seq", (ref,)
    ).fetchall()


def investigator(conn: sqlite3.Connection, name: str) -> investigators_table.Investigator | None:
    # A plain SELECT: investigators.get() runs executescript, which would commit the
    # transaction a change is in.
    row = conn.execute("SELECT * FROM investigators WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return investigators_table.row_to_investigator(row)


def investigator_for_login(conn: sqlite3.Connection, login: str) -> str | None:
    """The principal of the active investigator mapped to login user `login`, when the
    investigator register has a `login` column (`lbm keys investigator add ... --login`)."""
    # no ensure_schema here: it runs executescript, which would commit the caller's transaction
    columns = {r["name"] for r in conn.execute("PRAGMA table_info(investigators)")}
    if "login" not in columns:  # a register made before logins were mapped has no mapping
        return None
    row = conn.execute(
        "SELECT principal FROM investigators WHERE login = ? AND removed_at IS NULL", (login,)
    ).fetchone()
    return str(row["principal"]) if row else None

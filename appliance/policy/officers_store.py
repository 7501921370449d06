"""The officer register's storage: one append-only table in registry.sqlite.

`officer_register` holds one row per change (`add`, `end`, `key`), never updated or deleted
(triggers refuse it, as for the authorisation tables). A register change signed by a register
signer keeps its signed bytes and signature beside it. The rules that read it live in
`appliance.policy.officers`; this module only writes and reads rows.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from appliance.policy.model import OfficerPeriod, Rank
from appliance.policy.officers import OfficerEvent, periods
from store.clock import format_utc, parse_utc

SCHEMA = """
CREATE TABLE IF NOT EXISTS officer_register (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'end', 'key')),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT '',
    rank TEXT,
    valid_from TEXT,
    valid_to TEXT,
    ssh_key TEXT,
    signed_bytes BLOB,
    signature BLOB
);
CREATE INDEX IF NOT EXISTS officer_register_principal ON officer_register(principal, seq);
CREATE TRIGGER IF NOT EXISTS officer_register_no_update BEFORE UPDATE ON officer_register
BEGIN SELECT RAISE(ABORT, 'the officer register is append-only'); END;
CREATE TRIGGER IF NOT EXISTS officer_register_no_delete BEFORE DELETE ON officer_register
BEGIN SELECT RAISE(ABORT, 'the officer register is append-only'); END;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _t(value: str | None) -> datetime | None:
    return parse_utc(value) if value else None


def _event(row: sqlite3.Row) -> OfficerEvent:
    return OfficerEvent(
        seq=row["seq"],
        principal=row["principal"],
        kind=row["kind"],
        at=parse_utc(row["at"]),
        actor=row["actor"],
        name=row["name"],
        role=row["role"],
        rank=Rank(row["rank"]) if row["rank"] else None,
        valid_from=_t(row["valid_from"]),
        valid_to=_t(row["valid_to"]),
        ssh_key=row["ssh_key"],
    )


def _has_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='officer_register'"
    ).fetchone()
    return row is not None


def events(conn: sqlite3.Connection, principal: str | None = None) -> list[OfficerEvent]:
    if not _has_table(conn):
        return []
    if principal is None:
        rows = conn.execute("SELECT * FROM officer_register ORDER BY seq").fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM officer_register WHERE principal = ? ORDER BY seq", (principal,)
        ).fetchall()
    return [_event(r) for r in rows]


def register(
    conn: sqlite3.Connection, principal: str | None = None
) -> dict[str, list[OfficerPeriod]]:
    """Every officer's periods (or one officer's), folded from the register's rows."""
    return periods(events(conn, principal))


def append(
    conn: sqlite3.Connection,
    *,
    principal: str,
    kind: str,
    at: datetime,
    actor: str,
    name: str = "",
    role: str = "",
    rank: Rank | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    ssh_key: str | None = None,
    signed_bytes: bytes | None = None,
    signature: bytes | None = None,
) -> int:
    """Append one register row (inside the caller's transaction); returns its seq."""
    row = {
        "principal": principal,
        "kind": kind,
        "at": format_utc(at),
        "actor": actor,
        "name": name,
        "role": role,
        "rank": rank.value if rank else None,
        "valid_from": format_utc(valid_from) if valid_from else None,
        "valid_to": format_utc(valid_to) if valid_to else None,
        "ssh_key": ssh_key,
        "signed_bytes": signed_bytes,
        "signature": signature,
    }
    columns, names = ", ".join(row), ", ".join(":" + k for k in row)
    cur = conn.execute(f"INSERT INTO officer_register({columns}) VALUES ({names})", row)
    return int(cur.lastrowid or 0)

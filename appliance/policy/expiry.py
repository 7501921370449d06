"""Recording expiries: an authorisation that reaches its effective expiry (an urgent grant not
ratified within 72 hours included) gets one `auth_expired` audit entry, so the log shows when
recording stopped as well as when it started. Cancellations are audited when they are made.

`decide` needs none of this (it computes activity from history); this is for the reviewer.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from appliance.policy import registry
from store.audit import Action, AuditLog
from store.clock import format_utc

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_expiry_recorded (
    ref TEXT NOT NULL,
    expiry TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (ref, expiry)
);
"""


def record_expiries(
    conn: sqlite3.Connection, audit: AuditLog, actor: str, now: datetime
) -> list[str]:
    """Audit every authorisation whose expiry has passed and was not recorded yet."""
    conn.executescript(SCHEMA)
    recorded: list[str] = []
    for auth in registry.load_all(conn):
        cancelled = auth.cancelled_at
        if cancelled is not None and cancelled <= auth.expiry:
            continue  # it ended by cancellation, audited then
        if now < auth.expiry:
            continue
        expiry = format_utc(auth.expiry)
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT 1 FROM auth_expiry_recorded WHERE ref = ? AND expiry = ?",
                (auth.ref, expiry),
            ).fetchone()
            if row is not None:
                conn.execute("ROLLBACK")
                continue
            conn.execute(
                "INSERT INTO auth_expiry_recorded(ref, expiry, recorded_at) VALUES (?, ?, ?)",
                (auth.ref, expiry, format_utc(now)),
            )
            audit.append(
                Action.AUTH_EXPIRED,
                actor,
                refs=[auth.ref],
                subject=auth.subject,
                expiry=expiry,
                urgent_unratified=auth.awaiting_ratification,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        recorded.append(auth.ref)
    return recorded

"""Opening registry.sqlite: WAL mode, a busy timeout, foreign keys; one helper for every module."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=30,
            isolation_level=None,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = sqlite3.Row
    return conn


def data_version(conn: sqlite3.Connection) -> int:
    """Changes when another connection commits: the cheap poll behind snapshot reloads."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])

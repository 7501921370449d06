"""Opening registry.sqlite: WAL mode, a busy timeout, foreign keys; one helper for every module.

The database is created 0600 before SQLite opens it, whatever the umask: SQLite gives its -wal
and -shm files the database file's permissions, so all three stay private. A database (or WAL)
left group- or world-readable by an older version is narrowed to 0600 on the next write open.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

PRIVATE = 0o600


def _private(path: Path) -> None:
    """Create `path` 0600 if absent; narrow it (and its -wal, -shm) to 0600 if wider."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE))
    for item in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if item.stat().st_mode & 0o077:
                os.chmod(item, PRIVATE)


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
        _private(Path(path))
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

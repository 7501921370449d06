"""Pseudonyms for third parties in person-level search output: a keyed hash per REF.

Each authorisation gets its own random 32-byte key, made on first use and kept in the registry
(`search_keys(ref, key)`). A value becomes `pseud:` + 16 hex digits of
`sha256(outer || sha256(inner || value))`, with `inner` and `outer` two hex strings derived from
the key (an HMAC-style nesting, so no length extension). The same value gives the same pseudonym
within one REF, so an investigator sees that a third party recurs without learning who it is;
under another REF it gives another pseudonym, so searches under two refs cannot be joined.

The expression is plain DuckDB SQL (`Pseudonymiser.sql`), applied inside the search views; the
key appears only in the views' definitions, which `--sql` cannot read (see sqlguard), and is
scrubbed from any error text (`Pseudonymiser.scrub`). `Pseudonymiser.value` computes the same
pseudonym in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

PREFIX = "pseud:"
DIGITS = 16

SCHEMA = """
CREATE TABLE IF NOT EXISTS search_keys (
    ref TEXT PRIMARY KEY,
    key BLOB NOT NULL
);
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def key_for(conn: sqlite3.Connection, ref: str) -> bytes:
    """REF's pseudonym key, made (and committed) on first use. `conn` must be writable."""
    ensure_schema(conn)
    row = conn.execute("SELECT key FROM search_keys WHERE ref = ?", (ref,)).fetchone()
    if row is not None:
        return bytes(row[0])
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO search_keys (ref, key) VALUES (?, ?)",
            (ref, secrets.token_bytes(32)),
        )
    row = conn.execute("SELECT key FROM search_keys WHERE ref = ?", (ref,)).fetchone()
    return bytes(row[0])


def _derive(key: bytes, label: str) -> str:
    return hmac.new(key, label.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Pseudonymiser:
    """The keyed hash of one REF, in SQL and in Python."""

    key: bytes

    @property
    def _inner(self) -> str:
        return _derive(self.key, "lbm-search-inner")

    @property
    def _outer(self) -> str:
        return _derive(self.key, "lbm-search-outer")

    def value(self, value: str) -> str:
        inner = hashlib.sha256((self._inner + value).encode()).hexdigest()
        outer = hashlib.sha256((self._outer + inner).encode()).hexdigest()
        return PREFIX + outer[:DIGITS]

    def sql(self, expr: str) -> str:
        """A DuckDB expression giving the pseudonym of the VARCHAR `expr` (NULL stays NULL)."""
        return (
            f"('{PREFIX}' || left(sha256('{self._outer}' || sha256('{self._inner}' || "
            f"CAST({expr} AS VARCHAR))), {DIGITS}))"
        )

    def scrub(self, text: str) -> str:
        """`text` with the derived keys removed (for error messages that might quote a view)."""
        return text.replace(self._inner, "<key>").replace(self._outer, "<key>")

"""Investigators: named holders of an age key, registered in registry.sqlite.

An investigator is a registry entry (`lbm keys investigator add NAME AGE_PUBLIC_KEY --principal P
[--login USER] [--sign-key PUBKEY_FILE]`). Authorisation keys are wrapped to the age recipients
of the investigators assigned to the authorisation (and the configured custodians). `login`
maps the login user who acts on the gateway to the investigator (DECISIONS.md, "Who is
acting"), so the registry knows which principal acts: the subject of an authorisation can never
act on it. `ssh_key` is the investigator's OpenSSH Ed25519 public key: it signs the
MANIFEST.json of bundles they open, and `lbm archive bundle` names it in the gateway-signed
BUNDLE.json so anyone can check that signature.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass

from store import StoreError
from store.bech32 import Bech32Error, parse_age_recipient
from store.sshsig_wire import SshsigError, parse_key_line

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
AGE_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
LOGIN_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # a POSIX login name, as useradd accepts

SCHEMA = """
CREATE TABLE IF NOT EXISTS investigators (
    name TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    recipient TEXT NOT NULL,
    added_at TEXT NOT NULL,
    removed_at TEXT,
    login TEXT,
    ssh_key TEXT
);
"""


class InvestigatorError(StoreError):
    """An investigator entry is invalid, unknown or duplicated."""


@dataclass(frozen=True)
class Investigator:
    name: str
    principal: str
    recipient: str
    added_at: str
    removed_at: str | None
    login: str | None = None
    ssh_key: str | None = None  # OpenSSH Ed25519 public key that signs opened bundles

    @property
    def active(self) -> bool:
        return self.removed_at is None


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(investigators)")}
    if "login" not in columns:  # a register made before logins were mapped
        conn.execute("ALTER TABLE investigators ADD COLUMN login TEXT")
    if "ssh_key" not in columns:  # a register made before investigators had signing keys
        # on a read-only connection the rows are read without it
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("ALTER TABLE investigators ADD COLUMN ssh_key TEXT")


def row_to_investigator(row: sqlite3.Row) -> Investigator:
    return Investigator(
        row["name"],
        row["principal"],
        row["recipient"],
        row["added_at"],
        row["removed_at"],
        row["login"] if "login" in row.keys() else None,  # noqa: SIM118 (sqlite3.Row)
        row["ssh_key"] if "ssh_key" in row.keys() else None,  # noqa: SIM118 (sqlite3.Row)
    )


_row = row_to_investigator


def add(
    conn: sqlite3.Connection,
    name: str,
    recipient: str,
    principal: str,
    at: str,
    login: str | None = None,
    ssh_key: str | None = None,
) -> Investigator:
    if not NAME_RE.fullmatch(name):
        raise InvestigatorError(f"investigator name {name!r}: must match [a-z0-9][a-z0-9._-]*")
    if not NAME_RE.fullmatch(principal):
        raise InvestigatorError(f"principal {principal!r}: must match [a-z0-9][a-z0-9._-]*")
    if not AGE_RECIPIENT_RE.fullmatch(recipient):
        raise InvestigatorError(
            f"investigator {name}: {recipient!r} is not an age X25519 public key (age1...)"
        )
    try:
        parse_age_recipient(recipient)  # the checksum, and never a low-order point
    except Bech32Error as exc:
        raise InvestigatorError(f"investigator {name}: {recipient!r}: {exc}") from None
    if login is not None and not LOGIN_RE.fullmatch(login):
        raise InvestigatorError(f"login {login!r}: not a login user name ([a-z_][a-z0-9_-]*)")
    if ssh_key is not None:
        ssh_key = check_ssh_key(ssh_key, name)
    ensure_schema(conn)
    existing = get(conn, name)
    if existing is not None and existing.active:
        raise InvestigatorError(f"investigator {name} exists already")
    if login is not None:
        holder = conn.execute(
            "SELECT name FROM investigators WHERE login = ? AND removed_at IS NULL", (login,)
        ).fetchone()
        if holder is not None:
            raise InvestigatorError(
                f"login {login} is mapped to investigator {holder[0]} already (one login user "
                "acts as one investigator)"
            )
    conn.execute(
        "INSERT OR REPLACE INTO investigators(name, principal, recipient, added_at, removed_at,"
        " login, ssh_key) VALUES (?, ?, ?, ?, NULL, ?, ?)",
        (name, principal, recipient, at, login, ssh_key),
    )
    result = get(conn, name)
    assert result is not None
    return result


def check_ssh_key(text: str, name: str) -> str:
    """The canonical `ssh-ed25519 BASE64` of an OpenSSH public key line (comment dropped)."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise InvestigatorError(
            f"investigator {name}: signing key is not an OpenSSH ssh-ed25519 public key line"
        )
    line = f"{parts[0]} {parts[1]}"
    try:
        parse_key_line(line)
    except SshsigError as exc:
        raise InvestigatorError(f"investigator {name}: signing key: {exc}") from None
    return line


def remove(conn: sqlite3.Connection, name: str, at: str) -> Investigator:
    ensure_schema(conn)
    existing = get(conn, name)
    if existing is None or not existing.active:
        raise InvestigatorError(f"no active investigator named {name}")
    conn.execute("UPDATE investigators SET removed_at = ? WHERE name = ?", (at, name))
    result = get(conn, name)
    assert result is not None
    return result


def get(conn: sqlite3.Connection, name: str) -> Investigator | None:
    ensure_schema(conn)
    row = conn.execute("SELECT * FROM investigators WHERE name = ?", (name,)).fetchone()
    return _row(row) if row else None


def list_all(conn: sqlite3.Connection, *, include_removed: bool = False) -> list[Investigator]:
    ensure_schema(conn)
    rows = conn.execute("SELECT * FROM investigators ORDER BY name").fetchall()
    items = [_row(r) for r in rows]
    return items if include_removed else [i for i in items if i.active]

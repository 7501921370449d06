"""Who may act on an authorisation's evidence: the login user's investigator mapping.

A person-level search, `lbm archive bundle`, `lbm archive export` and collateral steps need the
acting login user (`store.actor.current_actor`, never an environment variable) to be mapped to
an active investigator (`lbm keys investigator add NAME KEY --principal P --login USER`) who is
either assigned to REF (`lbm auth assign`) or a custodian (an investigator whose age recipient
is listed in `[keys] custodians`). The subject of REF can never act on it, whatever the mapping
says. No private key is presented for the check (DECISIONS.md, "Who is acting").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.policy.registry_store import assignees, load_one
from store import investigators as investigators_table
from store import sqlite as store_sqlite
from store.investigators import Investigator


class AccessRefused(Exception):
    """The login user may not act on REF; the message says why (and never reveals content)."""


@dataclass(frozen=True)
class Acting:
    """The person acting: their login, registered investigator and why they may act."""

    login: str
    investigator: Investigator
    basis: Literal["assigned", "custodian"]

    @property
    def name(self) -> str:
        return self.investigator.name

    def as_audit(self) -> dict[str, str]:
        return {"login": self.login, "investigator": self.name, "basis": self.basis}


def investigator_for_login(conn: sqlite3.Connection, login: str) -> Investigator | None:
    """The active investigator mapped to `login`, if any."""
    for inv in investigators_table.list_all(conn):
        if inv.login == login:
            return inv
    return None


def acting_for_ref(
    conn: sqlite3.Connection, login: str, ref: str, custodians: Sequence[str]
) -> Acting:
    """The investigator `login` acts as on REF, or AccessRefused naming what is missing."""
    auth = load_one(conn, ref)
    if auth is None:
        raise AccessRefused(f"{ref}: no such authorisation")
    if auth.ref != ref:  # the registry matches refs without case: the audit must not
        raise AccessRefused(f"{ref}: no such authorisation (references are exact: {auth.ref})")
    inv = investigator_for_login(conn, login)
    if inv is None:
        raise AccessRefused(
            f"login user {login!r} is not mapped to a registered investigator "
            "(lbm keys investigator add NAME KEY --principal P --login USER)"
        )
    if inv.principal == auth.subject:
        raise AccessRefused(f"{ref}: investigator {inv.name} is the subject of {ref}")
    if inv.name in assignees(conn, ref):
        return Acting(login, inv, "assigned")
    if inv.recipient in set(custodians):
        return Acting(login, inv, "custodian")
    raise AccessRefused(
        f"{ref}: investigator {inv.name} (login {login!r}) is neither assigned to {ref} "
        "(lbm auth assign) nor a custodian ([keys] custodians)"
    )


def check_access(registry: Path, login: str, ref: str, custodians: Sequence[str]) -> Acting:
    """`acting_for_ref` on a read-only connection to the registry file."""
    if not registry.exists():
        raise AccessRefused(f"{ref}: no registry at {registry}")
    conn = store_sqlite.connect(registry, readonly=True)
    try:
        return acting_for_ref(conn, login, ref, custodians)
    finally:
        conn.close()

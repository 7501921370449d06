"""Signed changes to the investigator register (with `[policy] require_officer_signature`).

Investigators decide who may search a person, take evidence bundles and approve collateral
removal; the second-person check of collateral approval compares investigator entries. An audit
officer who could register a second persona (own principal, login and key) at will could assign
it, rewrap a key to it and approve their own proposal. So on a live gateway (`lbm init
--system`), `lbm keys investigator add|remove` takes a change statement signed by a register
signer (`[policy] register_signers`, the same allowed-signers file as officer-register changes),
SSHSIG namespace `lbm-investigator-register`:

    action = "investigator_add"          # or "investigator_remove"
    name = "inv2"
    principal = "p400"                   # add only
    recipient = "age1..."                # add only
    login = "alice"                      # add only, optional
    ssh_key = "ssh-ed25519 AAAA..."      # add only, optional (the --sign-key)
    not_after = "2026-12-31T00:00:00Z"   # the statement is refused after this instant

The command's arguments must say exactly what the statement says, and a statement is used once
(its SHA-256 is kept in the registry), so an old signed removal or addition cannot be replayed.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from appliance.policy import InvalidInput, RuleViolation, values
from appliance.policy.officer_signatures import Signed, load_toml, verify_register_change

NAMESPACE = "lbm-investigator-register"
ACTIONS = ("investigator_add", "investigator_remove")
FIELDS = ("action", "name", "principal", "recipient", "login", "ssh_key", "not_after")
ADD_ONLY = ("principal", "recipient", "login", "ssh_key")

SCHEMA = """
CREATE TABLE IF NOT EXISTS investigator_statements (
    signed_sha256 TEXT PRIMARY KEY,
    used_at TEXT NOT NULL
);
"""


def parse(data: bytes) -> dict[str, Any]:
    """The statement's fields, or InvalidInput naming what is wrong."""
    raw = load_toml(data, "investigator change")
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise InvalidInput(
            f"investigator change: {unknown[0]}: unknown field (known: {', '.join(FIELDS)})"
        )
    if raw.get("action") not in ACTIONS:
        raise InvalidInput(f"investigator change: action must be one of {', '.join(ACTIONS)}")
    if not isinstance(raw.get("name"), str):
        raise InvalidInput("investigator change: missing field: name")
    if "not_after" not in raw:
        raise InvalidInput("investigator change: missing field: not_after (an ISO 8601 instant)")
    if raw["action"] == "investigator_remove":
        extra = [k for k in ADD_ONLY if k in raw]
        if extra:
            raise InvalidInput(f"investigator change: {extra[0]}: not part of a removal")
    elif not all(isinstance(raw.get(k), str) for k in ("principal", "recipient")):
        raise InvalidInput("investigator change: an addition names principal and recipient")
    return raw


def verify(
    signed: Signed,
    signers_text: str,
    where: str,
    action: str,
    given: dict[str, str | None],
    at: datetime,
) -> dict[str, str]:
    """Check a register signer signed exactly this change, still in time; the audit fields."""
    fields = verify_register_change(
        signed, signers_text, where, at, namespace=NAMESPACE, what="investigator change"
    )
    change = parse(signed.signed_bytes)
    if change["action"] != action:
        raise RuleViolation(f"the signed change is {change['action']}, not {action}")
    if values.parse_time(change["not_after"], "not_after") < at:
        raise RuleViolation(
            f"the signed change expired at {change['not_after']} (not_after); sign a new one"
        )
    for key, value in given.items():
        signed_value = change.get(key)
        if key == "ssh_key" and value is not None and signed_value is not None:
            same = value.split()[:2] == str(signed_value).split()[:2]
        else:
            same = value == signed_value
        if not same:
            raise RuleViolation(
                f"{key}: {value!r} differs from the signed change ({signed_value!r})"
            )
    return fields


def _digest(signed: Signed) -> str:
    return signed.audit_fields("")["signed_sha256"]


def check_unused(conn: sqlite3.Connection, signed: Signed) -> None:
    """RuleViolation when this statement was used before (a replay)."""
    conn.execute(SCHEMA)
    row = conn.execute(
        "SELECT used_at FROM investigator_statements WHERE signed_sha256 = ?", (_digest(signed),)
    ).fetchone()
    if row is not None:
        raise RuleViolation(
            f"this signed investigator change was used already (at {row[0]}); a statement is "
            "used once"
        )


def record_use(conn: sqlite3.Connection, signed: Signed, at: str) -> None:
    conn.execute(SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO investigator_statements(signed_sha256, used_at) VALUES (?, ?)",
        (_digest(signed), at),
    )

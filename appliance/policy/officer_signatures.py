"""Officers' signatures on their acts: CA1 applications and ratify/renew/review statements.

An officer signs with stock OpenSSH, `ssh-keygen -Y sign -f officer_key -n lbm-ca1 FILE`, and the
registry checks the detached SSHSIG (namespace `lbm-ca1`) against the SSH key the officer register
holds for that officer at the instant of the act. What is signed:

- a grant: the CA1 application file itself (the TOML `lbm auth grant --from-file` reads, bytes as
  given); the application granted is exactly the one parsed from those bytes;
- ratify, renew, review: a statement, a small TOML naming `ref`, `action`, `officer` and the
  `expiry` it applies to (the authorisation's expiry when signed), plus the `note` (ratify,
  review) or `results` (renew). A statement for another ref, act, officer or expiry is refused,
  and a statement already used for REF is refused, so none can be replayed.

The signed bytes and signature are kept in the registry (`auth_signatures`) and their SHA-256 in
the audit entry, so `lbm auth show REF --evidence DIR` can hand them to a reviewer.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appliance.policy import InvalidInput, RuleViolation
from appliance.policy import application as application_form
from appliance.policy.model import Application, Authorisation, Officer, OfficerPeriod
from appliance.policy.values import check_ref, parse_time
from store import sshsig
from store.clock import format_utc

NAMESPACE = "lbm-ca1"
STATEMENT_ACTIONS = ("ratify", "renew", "review")
STATEMENT_FIELDS = ("ref", "action", "officer", "expiry", "note", "results")


@dataclass(frozen=True)
class Signed:
    """Bytes as signed and the armored detached signature over them."""

    signed_bytes: bytes
    signature: bytes

    def audit_fields(self, fingerprint: str) -> dict[str, str]:
        return {
            "signed_sha256": hashlib.sha256(self.signed_bytes).hexdigest(),
            "signature_sha256": hashlib.sha256(self.signature).hexdigest(),
            "key_fingerprint": fingerprint,
        }


@dataclass(frozen=True)
class Statement:
    ref: str
    action: str
    officer: str
    expiry: datetime
    text: str


def load_toml(data: bytes, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{what}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{what}: TOML syntax error: {exc}") from None


def parse_statement(data: bytes) -> Statement:
    raw = load_toml(data, "statement")
    unknown = [k for k in raw if k not in STATEMENT_FIELDS]
    if unknown:
        raise InvalidInput(
            f"statement: {unknown[0]}: unknown field (known: {', '.join(STATEMENT_FIELDS)})"
        )
    missing = [k for k in ("ref", "action", "officer", "expiry") if k not in raw]
    if missing:
        raise InvalidInput(f"statement: missing field(s): {', '.join(missing)}")
    action = str(raw["action"])
    if action not in STATEMENT_ACTIONS:
        raise InvalidInput(
            f"statement: action {action!r}: must be one of {', '.join(STATEMENT_ACTIONS)}"
        )
    text_key = "results" if action == "renew" else "note"
    return Statement(
        ref=check_ref(str(raw["ref"])),
        action=action,
        officer=str(raw["officer"]),
        expiry=parse_time(raw["expiry"], "statement: expiry"),
        text=str(raw.get(text_key, "")).strip(),
    )


def check_statement(stmt: Statement, auth: Authorisation, action: str, officer: str) -> None:
    """The statement is for this act: same ref, action, officer and current expiry."""
    if stmt.ref != auth.ref:
        raise RuleViolation(f"the signed statement is for {stmt.ref}, not {auth.ref}")
    if stmt.action != action:
        raise RuleViolation(f"the signed statement is for {stmt.action}, not {action}")
    if stmt.officer != officer:
        raise RuleViolation(f"the signed statement names officer {stmt.officer}, not {officer}")
    if stmt.expiry != auth.expiry:
        raise RuleViolation(
            f"the signed statement applies to expiry {format_utc(stmt.expiry)}, but {auth.ref} "
            f"now expires {format_utc(auth.expiry)} (a statement cannot be replayed)"
        )


def verify(period: OfficerPeriod, signed: Signed) -> str:
    """Check the officer's registered key signed the bytes (namespace lbm-ca1); returns the
    key's fingerprint. Refused, naming what is wrong, otherwise."""
    if not period.ssh_key:
        raise RuleViolation(
            f"officer {period.principal} has no SSH key in the officer register "
            "(lbm officer key); a signed act cannot be checked"
        )
    try:
        sshsig.verify(signed.signature, signed.signed_bytes, NAMESPACE, period.ssh_key)
    except sshsig.SshsigError as exc:
        raise RuleViolation(
            f"the signature is not a valid signature of officer {period.principal}'s registered "
            f"key ({sshsig.fingerprint(period.ssh_key)}) over these bytes: {exc}"
        ) from None
    return sshsig.fingerprint(period.ssh_key)


def need(signed: Signed | None, required: bool, what: str) -> None:
    if signed is None and required:
        raise RuleViolation(
            f"{what} must be signed by the officer ([policy] require_officer_signature): "
            "sign it with ssh-keygen -Y sign -f officer_key -n lbm-ca1 FILE and give "
            "--signature FILE.sig"
        )


def check_signed_application(
    app: Application,
    period: OfficerPeriod,
    signed: Signed | None,
    now: datetime,
    *,
    required: bool,
    resolve_officer: Callable[[str], Officer],
) -> dict[str, str]:
    """Verify a signed CA1 application and that it is exactly the application granted;
    returns the audit fields ({} when unsigned and not required)."""
    need(signed, required, "the CA1 application")
    if signed is None:
        return {}
    fingerprint = verify(period, signed)
    fields = application_form.normalise_fields(
        load_toml(signed.signed_bytes, "signed application"), "signed application: "
    )
    if fields.get("start") in (None, ""):
        # Without a start, a signed application could be kept and granted months later; with
        # one, "never in the past" bounds its use to the minute the officer chose.
        raise RuleViolation(
            "signed application: `start` is required in a signed CA1 application, so that it "
            "cannot be granted later than the officer intended"
        )
    as_signed = application_form.build_application(
        fields, urgent=app.urgent, now=now, resolve_officer=resolve_officer
    )
    if as_signed != app:
        raise RuleViolation(
            "the application differs from the signed application file (with a signature, "
            "every field comes from the signed file)"
        )
    return signed.audit_fields(fingerprint)


def check_signed_statement(
    auth: Authorisation,
    action: str,
    period: OfficerPeriod,
    text: str,
    signed: Signed | None,
    *,
    required: bool,
    used: Sequence[bytes],
) -> tuple[str, dict[str, str]]:
    """Verify a signed ratify/renew/review statement for this act (not one used before);
    returns the text as signed (note or results) and the audit fields."""
    need(signed, required, f"the {action} statement")
    if signed is None:
        return text, {}
    fingerprint = verify(period, signed)
    stmt = parse_statement(signed.signed_bytes)
    check_statement(stmt, auth, action, period.principal)
    if text.strip() and text.strip() != stmt.text:
        raise RuleViolation(f"the {action} text given differs from the signed statement's")
    if signed.signed_bytes in used:
        raise RuleViolation(f"this signed statement was used already for {auth.ref}")
    return stmt.text, signed.audit_fields(fingerprint)


# -- officer-register changes, signed by a register signer ----------------------------------------
REGISTER_NAMESPACE = "lbm-officer-register"
CHANGE_FIELDS = ("action", "principal", "name", "role", "rank", "from", "to", "at", "ssh_key")
CHANGE_ACTIONS = ("officer_add", "officer_end", "officer_key")


def parse_change(data: bytes) -> dict[str, Any]:
    """A signed register change: `action` (officer_add, officer_end, officer_key), `principal`
    and the change's fields (name, role, rank, from, to for an add; at for an end; ssh_key)."""
    raw = load_toml(data, "register change")
    unknown = [k for k in raw if k not in CHANGE_FIELDS]
    if unknown:
        raise InvalidInput(
            f"register change: {unknown[0]}: unknown field (known: {', '.join(CHANGE_FIELDS)})"
        )
    if raw.get("action") not in CHANGE_ACTIONS:
        raise InvalidInput(f"register change: action must be one of {', '.join(CHANGE_ACTIONS)}")
    if "principal" not in raw:
        raise InvalidInput("register change: missing field: principal")
    return raw


def verify_register_change(
    signed: Signed,
    signers_text: str,
    where: str,
    at: datetime,
    *,
    namespace: str = REGISTER_NAMESPACE,
    what: str = "register change",
) -> dict[str, str]:
    """Check a register signer (an entry of the `[policy] register_signers` allowed-signers
    file, valid at `at`) signed the change in `namespace` (officer-register changes, or
    investigator-register changes); returns the audit fields (signer included)."""
    try:
        signers = sshsig.parse_allowed_signers(signers_text, where)
        entry = sshsig.verify_allowed(
            signed.signature, signed.signed_bytes, namespace, signers, at=at
        )
    except sshsig.SshsigError as exc:
        raise RuleViolation(f"the {what} is not signed by a register signer: {exc}") from None
    fingerprint = sshsig.fingerprint(entry.public_key)
    return {**signed.audit_fields(fingerprint), "signer": ",".join(entry.principals)}

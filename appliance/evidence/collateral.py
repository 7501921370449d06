"""Collateral intrusion removal: a proposal by one holder of REF's key, approval by another.

`propose` records a proposal in the registry table `collateral_proposals` after checking that
the acting login user may act on REF (`access.check_access`), that the identity presented
unwraps REF's authorisation key (a holder) and belongs to that same investigator, and that the
record is in a sealed segment of REF's archive. `approve` repeats the checks for the approver,
refuses self-approval (the approver's login mapping, the investigator the identity belongs to,
or their principal equal to the proposer's) and then has the store rewrite the segment
(`store.collateral.remove_record`). Every step and refusal is audited with ids, names and the
reason given, never content (docs/collateral.md).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from appliance.evidence.access import AccessRefused, acting_for_ref, investigator_for_login
from store import KeyError_
from store import agefile as age
from store import investigators as investigators_table
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc
from store.collateral import CollateralError, Removal, locate, remove_record, seg_id
from store.investigators import Investigator
from store.keys import KeyStore, check_ref
from store.paths import DataPaths
from store.signing import GatewayKey

RECORD_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})/(\d{6,9})/([1-9]\d{0,9})$")
MAX_REASON = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS collateral_proposals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL,
    record_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    proposer TEXT NOT NULL,
    proposer_login TEXT NOT NULL,
    proposer_principal TEXT NOT NULL,
    proposed_at TEXT NOT NULL,
    approver TEXT,
    approver_login TEXT,
    approved_at TEXT,
    state TEXT NOT NULL CHECK (state IN ('proposed', 'approved')),
    old_segment TEXT,
    new_segment TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS collateral_open_record
    ON collateral_proposals(record_id) WHERE state = 'proposed';
"""


class Refused(Exception):
    """A collateral step refused (audited); `code` is the audit reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Proposal:
    id: int
    ref: str
    record_id: str
    reason: str
    proposer: str
    proposer_login: str
    proposer_principal: str
    proposed_at: str
    approver: str | None
    approver_login: str | None
    approved_at: str | None
    state: str
    old_segment: str | None
    new_segment: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What a collateral step needs from the data directory (the CLI builds it)."""

    paths: DataPaths
    key: GatewayKey
    clock: Clock
    audit_log: AuditLog
    actor: str  # the login user (store.actor.current_actor)
    custodians: Sequence[str]

    def connect(self) -> sqlite3.Connection:
        conn = store_sqlite.connect(self.paths.registry)
        conn.executescript(SCHEMA)
        return conn

    def now(self) -> str:
        return format_utc(self.clock.now())

    def audit(self, action: Action, ref: str | None, **fields: Any) -> None:
        self.audit_log.append(action, self.actor, refs=(ref,) if ref else (), **fields)

    def refuse(self, step: str, ref: str | None, code: str, message: str, **fields: Any) -> Refused:
        self.audit(Action.COLLATERAL_REFUSED, ref, step=step, code=code, why=message, **fields)
        return Refused(code, message)


def check_record_id(ref: str, record_id: str) -> str:
    """Usage check (exit 2): a record id of REF, `REF/NNNNNN/N`."""
    check_ref(ref)
    m = RECORD_ID_RE.fullmatch(record_id)
    if not m or m.group(1) != ref:
        raise ValueError(f"--record {record_id!r}: not a record id of {ref} ({ref}/NNNNNN/N)")
    return record_id


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not text or len(text) > MAX_REASON or any(ord(c) < 32 and c not in "\t" for c in text):
        raise ValueError(f"--reason: one line of 1 to {MAX_REASON} characters, please")
    return text


def _identity_investigators(conn: sqlite3.Connection, identity_text: str) -> list[Investigator]:
    """The active investigators whose registered age recipient is a key of this identity."""
    try:
        keys = age.parse_identity_file(identity_text, "--identity")
    except age.AgeError:
        return []
    publics = {age.encode_recipient(k.public_key()) for k in keys}
    return [i for i in investigators_table.list_all(conn) if i.recipient in publics]


def _who(
    ctx: Context, conn: sqlite3.Connection, step: str, ref: str, identity_text: str, **fields: Any
) -> tuple[Investigator, list[Investigator]]:
    """The acting investigator (login mapping, access to REF) and the identity's investigators,
    once the identity is shown to unwrap REF's authorisation key."""
    login = ctx.actor
    try:
        acting = acting_for_ref(conn, login, ref, ctx.custodians)
    except AccessRefused as exc:
        raise ctx.refuse(step, ref, "no_access", str(exc), login=login, **fields) from None
    who = {"login": login, "investigator": acting.name, **fields}
    try:
        KeyStore(ctx.paths).unwrap_authorisation(ref, identity_text)
    except KeyError_:
        raise ctx.refuse(
            step,
            ref,
            "not_holder",
            f"{ref}: the identity presented does not unwrap {ref}'s authorisation key (not an "
            "age identity of a holder; `lbm keys rewrap` wraps it to current assignees)",
            **who,
        ) from None
    return acting.investigator, _identity_investigators(conn, identity_text)


def _require_own(
    ctx: Context,
    step: str,
    ref: str,
    acting: Investigator,
    idents: list[Investigator],
    **fields: Any,
) -> None:
    if [i.name for i in idents] != [acting.name]:
        names = ", ".join(i.name for i in idents)
        whose = f"investigator {names}'s" if idents else "no registered investigator's"
        raise ctx.refuse(
            step,
            ref,
            "identity_mismatch",
            f"the identity presented is {whose} key, but login {ctx.actor!r} acts as "
            f"investigator {acting.name}: present your own identity",
            investigator=acting.name,
            identity_investigators=[i.name for i in idents],
            **fields,
        )


def propose(ctx: Context, ref: str, record_id: str, reason: str, identity_text: str) -> Proposal:
    conn = ctx.connect()
    try:
        acting, idents = _who(ctx, conn, "propose", ref, identity_text, record_id=record_id)
        _require_own(ctx, "propose", ref, acting, idents, record_id=record_id)
        try:
            located = locate(ctx.paths, ref, record_id)
        except CollateralError as exc:
            raise ctx.refuse(
                "propose", ref, exc.code, str(exc), record_id=record_id, investigator=acting.name
            ) from None
        now = ctx.now()
        try:
            cur = conn.execute(
                "INSERT INTO collateral_proposals(ref, record_id, reason, proposer, "
                "proposer_login, proposer_principal, proposed_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'proposed')",
                (ref, record_id, reason, acting.name, ctx.actor, acting.principal, now),
            )
        except sqlite3.IntegrityError:
            open_id = conn.execute(
                "SELECT id FROM collateral_proposals WHERE record_id = ? AND state = 'proposed'",
                (record_id,),
            ).fetchone()
            raise ctx.refuse(
                "propose",
                ref,
                "duplicate",
                f"record {record_id} has an open proposal already: {open_id[0] if open_id else ''}",
                record_id=record_id,
                investigator=acting.name,
            ) from None
        proposal = get(conn, int(cur.lastrowid or 0))
        assert proposal is not None
        ctx.audit(
            Action.COLLATERAL_PROPOSE,
            ref,
            proposal=proposal.id,
            record_id=record_id,
            reason=reason,
            proposer=acting.name,
            proposer_login=ctx.actor,
            segment=seg_id(ref, located.segment),
        )
        return proposal
    finally:
        conn.close()


def approve(ctx: Context, proposal_id: int, identity_text: str) -> tuple[Proposal, Removal]:
    conn = ctx.connect()
    try:
        proposal = get(conn, proposal_id)
        if proposal is None:
            message = f"no collateral proposal {proposal_id}"
            raise ctx.refuse("approve", None, "unknown_proposal", message, proposal=proposal_id)
        ref, ids = proposal.ref, {"proposal": proposal.id, "record_id": proposal.record_id}
        acting, idents = _who(ctx, conn, "approve", ref, identity_text, **ids)
        people = [acting, *idents]
        if (
            proposal.proposer in {p.name for p in people}
            or proposal.proposer_principal in {p.principal for p in people}
            or ctx.actor == proposal.proposer_login
        ):
            raise ctx.refuse(
                "approve",
                ref,
                "self_approval",
                f"proposal {proposal.id} was made by investigator {proposal.proposer}: a "
                "different investigator (not the same person, login or key) must approve it",
                investigator=acting.name,
                identity_investigators=[i.name for i in idents],
                **ids,
            )
        _require_own(ctx, "approve", ref, acting, idents, **ids)
        if proposal.state != "proposed":
            raise ctx.refuse(
                "approve",
                ref,
                "not_open",
                f"proposal {proposal.id} is {proposal.state} already",
                investigator=acting.name,
                **ids,
            )
        a = ctx
        try:
            removal = remove_record(
                a.paths,
                a.key,
                a.clock,
                a.audit_log,
                a.actor,
                ref,
                proposal.record_id,
                identity_text,
                proposal=proposal.id,
                proposer=proposal.proposer,
                approver=acting.name,
            )
        except CollateralError as exc:
            raise ctx.refuse(
                "approve", ref, exc.code, str(exc), investigator=acting.name, **ids
            ) from None
        ctx.audit(
            Action.COLLATERAL_APPROVE,
            ref,
            **{**ids, **removal.as_audit()},
            reason=proposal.reason,
            proposer=proposal.proposer,
            proposer_login=proposal.proposer_login,
            approver=acting.name,
            approver_login=a.actor,
            resumed=removal.resumed,
        )
        now = ctx.now()
        conn.execute(
            "UPDATE collateral_proposals SET state = 'approved', approver = ?, "
            "approver_login = ?, approved_at = ?, old_segment = ?, new_segment = ? "
            "WHERE id = ? AND state = 'proposed'",
            (
                acting.name,
                a.actor,
                now,
                seg_id(ref, removal.old_segment),
                seg_id(ref, removal.new_segment),
                proposal.id,
            ),
        )
        done = get(conn, proposal.id)
        assert done is not None
        return done, removal
    finally:
        conn.close()


def get(conn: sqlite3.Connection, proposal_id: int) -> Proposal | None:
    row = conn.execute("SELECT * FROM collateral_proposals WHERE id = ?", (proposal_id,)).fetchone()
    return Proposal(**dict(row)) if row else None


def visible(ctx: Context, ref: str | None) -> list[Proposal]:
    """Proposals (of REF, or all) on references the acting login user may act on."""
    conn = ctx.connect()
    try:
        login = ctx.actor
        if investigator_for_login(conn, login) is None:
            raise Refused("no_access", f"login user {login!r} is not mapped to an investigator")
        if ref is not None:
            try:
                acting_for_ref(conn, login, ref, ctx.custodians)
            except AccessRefused as exc:
                raise Refused("no_access", str(exc)) from None
        rows = conn.execute("SELECT * FROM collateral_proposals ORDER BY id").fetchall()
        found: list[Proposal] = []
        allowed: dict[str, bool] = {}
        for row in rows:
            p = Proposal(**dict(row))
            if ref is not None and p.ref != ref:
                continue
            if p.ref not in allowed:
                try:
                    acting_for_ref(conn, login, p.ref, ctx.custodians)
                    allowed[p.ref] = True
                except AccessRefused:
                    allowed[p.ref] = False
            if allowed[p.ref]:
                found.append(p)
        return found
    finally:
        conn.close()

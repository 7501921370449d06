"""The authorisation register as a service: each act checked by the rules, recorded, audited.

Storage (tables, rows) is `registry_store` and `officers_store`; the rules are `rules` and
`officers`, pure and readable without SQL. This module puts them together:

- the acting officer's name, role and rank come from the officer register at the instant of the
  act, never from the caller: an `Application`'s officer is replaced by the register's entry;
- every change runs in one immediate transaction, is audited inside it (so a change whose audit
  entry cannot be written is rolled back), and a refusal by a rule is audited as `AUTH_REFUSED`;
- a grant's key pair is removed again when the grant is not recorded, including when the final
  COMMIT fails, so no key material outlives a grant the registry does not hold.

Statements are stored in the registry; the audit log carries only their SHA-256.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from appliance.policy import RegistryError, RuleViolation, officers, rules
from appliance.policy import officer_signatures as signatures
from appliance.policy import officers_store as officer_rows
from appliance.policy import registry_store as rows
from appliance.policy.grant_keys import GrantKeys, KeyMaker
from appliance.policy.model import Application, Authorisation, EventKind, Officer, OfficerPeriod
from appliance.policy.officer_signatures import Signed
from appliance.policy.registry_store import assignees, ensure_schema, load_all, load_one
from store import StoreError
from store import investigators as investigators_table
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc
from store.paths import DataPaths

__all__ = ["ListedAuthorisation", "Registry", "assignees", "ensure_schema", "load_all", "load_one"]


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@dataclass(frozen=True)
class ListedAuthorisation:
    authorisation: Authorisation
    state: str
    flags: tuple[str, ...]
    rewrap_due: bool


class Registry:
    """The register, bound to a connection, a clock, an actor and (for changes) the audit log."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        clock: Clock,
        actor: str,
        audit: AuditLog | None = None,
        paths: DataPaths | None = None,
        custodians: Sequence[str] = (),
        key_maker: KeyMaker | None = None,
        renewal_window_days: int = rules.DEFAULT_RENEWAL_WINDOW_DAYS,
        require_signature: bool = False,
    ) -> None:
        self.conn = conn
        self.require_signature = require_signature
        self.clock = clock
        self.actor = actor
        self.audit = audit
        self.paths = paths
        self.custodians = tuple(custodians)
        self.renewal_window_days = renewal_window_days
        self.keys = GrantKeys(paths, key_maker)
        ensure_schema(conn)

    @classmethod
    def open(
        cls,
        paths: DataPaths,
        *,
        clock: Clock,
        actor: str,
        audit: AuditLog | None,
        custodians: Sequence[str] = (),
        renewal_window_days: int = rules.DEFAULT_RENEWAL_WINDOW_DAYS,
        require_signature: bool = False,
    ) -> Registry:
        return cls(
            store_sqlite.connect(paths.registry),
            clock=clock,
            actor=actor,
            audit=audit,
            paths=paths,
            custodians=custodians,
            renewal_window_days=renewal_window_days,
            require_signature=require_signature,
        )

    def close(self) -> None:
        self.conn.close()

    # -- transactions and audit ----------------------------------------------------------------
    @contextmanager
    def _write(self, action: str, ref: str | None) -> Iterator[datetime]:
        """One immediate transaction; a RuleViolation rolls back and is audited as refused. A
        COMMIT that fails rolls back too, and the audit log says the change was not recorded."""
        now = self.clock.now()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield now
        except RuleViolation as exc:
            self.conn.execute("ROLLBACK")
            self.audit_refusal(action, ref, str(exc))
            raise
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.audit_refusal(action, ref, f"not recorded: the registry commit failed ({exc})")
            raise RegistryError(f"{action}: the registry could not record it ({exc})") from exc

    def _audit(self, action: Action, refs: Sequence[str], **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(action, self.actor, refs=refs, **fields)

    def audit_refusal(self, action: str, ref: str | None, reason: str) -> None:
        """Record a refused request (rule violation) in the audit log; best effort when the
        log is not available (an uninitialised data directory)."""
        if self.audit is None:
            return
        with suppress(StoreError):
            self.audit.append(
                Action.AUTH_REFUSED,
                self.actor,
                refs=(ref,) if ref and rules.REF_RE.fullmatch(ref) else (),
                request=action,
                reason=reason,
            )

    def _require(self, ref: str) -> Authorisation:
        auth = load_one(self.conn, ref)
        if auth is None:
            raise RegistryError(f"no authorisation with reference {ref!r}")
        return auth

    def _append(self, ref: str, kind: EventKind, at: datetime, **kw: Any) -> int:
        return rows.append_history(self.conn, ref, kind, at, self.actor, **kw)

    def _active_investigator(self, name: str) -> investigators_table.Investigator:
        inv = rows.investigator(self.conn, name)
        if inv is None or not inv.active:
            raise RuleViolation(
                f"investigator {name!r} is not registered (lbm keys investigator add)"
            )
        return inv

    # -- the officer register ------------------------------------------------------------------
    def officer_periods(self, principal: str | None = None) -> dict[str, list[OfficerPeriod]]:
        return officer_rows.register(self.conn, principal)

    def officer_at(self, principal: str, at: datetime) -> OfficerPeriod:
        """The register's entry for `principal` at `at` (RuleViolation naming the register
        when there is none)."""
        rules.check_principal(principal, "officer")
        return officers.officer_at(self.officer_periods(principal), principal, at)

    # -- operations ----------------------------------------------------------------------------
    def grant(self, app: Application, signed: Signed | None = None) -> Authorisation:
        """Record a standard or urgent grant and create its key pair (wrapped to the named
        investigators and the custodians). The officer is the register's entry at this instant,
        whatever name, role or rank `app` carries."""
        action = "urgent" if app.urgent else "grant"
        with ExitStack() as stack, self._write(action, app.ref) as now:
            period = self.officer_at(app.officer.principal, now)
            app = replace(app, officer=period.officer)
            self._check_grant(app, now)
            signature = self._signed_application(app, period, signed, now)
            recipients = [self._active_investigator(n).recipient for n in app.investigators]
            expiry = rules.initial_expiry(app)
            public_key = stack.enter_context(  # removed again unless COMMIT succeeds
                self.keys.provisional(app.ref, recipients + list(self.custodians))
            )
            rows.insert_authorisation(
                self.conn, app, public_key=public_key, now=now, actor=self.actor
            )
            for name in app.investigators:
                rows.insert_assignment(self.conn, app.ref, name, now, self.actor)
            kind = EventKind.URGENT if app.urgent else EventKind.GRANT
            self._append(
                app.ref,
                kind,
                now,
                officer=app.officer,
                expiry=expiry,
                investigators=app.investigators,
            )
            if signed is not None:
                self._keep_signature(app.ref, action, period, now, signed)
            self._audit_grant(app, expiry, public_key, signature)
        return self._require(app.ref)

    def _registered(self, principal: str, at: datetime) -> Officer:
        return self.officer_at(principal, at).officer

    def _check_grant(self, app: Application, now: datetime) -> None:
        officer = app.officer
        try:
            rules.check_application(app)
        except RuleViolation as exc:
            raise RuleViolation(
                f"the officer register has {officer.principal} as {officer.role} "
                f"({officer.rank.value}): {exc}"
            ) from None
        rules.resolve_start(app.start, now)
        existing = self.conn.execute(
            "SELECT ref FROM authorisations WHERE ref = ?", (app.ref,)
        ).fetchone()
        if existing is not None:
            raise RuleViolation(f"reference {app.ref} exists already ({existing['ref']})")
        for name in app.investigators:
            rules.check_assign(app, self._active_investigator(name).principal)
        if app.urgent:
            same_subject = [a for a in load_all(self.conn) if a.subject == app.subject]
            rules.check_urgent_chain(same_subject, now)

    def _audit_grant(
        self, app: Application, expiry: datetime, public_key: str, signature: dict[str, str]
    ) -> None:
        self._audit(
            Action.AUTH_URGENT if app.urgent else Action.AUTH_GRANT,
            [app.ref],
            subject=app.subject,
            case_type=app.case_type.value,
            purposes=[p.value for p in app.purposes],
            channels=[c.value for c in app.channels],
            officer=app.officer.as_dict(),
            start=format_utc(app.start),
            expiry=format_utc(expiry),
            investigators=list(app.investigators),
            custodians=len(self.custodians),
            open_do_not_decrypt=app.open_do_not_decrypt,
            retention_days=app.retention_days,
            ripa_considered=app.ripa_considered,
            public_key=public_key,
            statements_sha256={
                "necessity": sha256(app.necessity),
                "proportionality": sha256(app.proportionality),
                "collateral": sha256(app.collateral),
                "ripa_note": sha256(app.ripa_note),
            },
            **({"signature": signature} if signature else {}),
        )

    # -- signatures (the checks are officer_signatures') ---------------------------------------
    def _signed_application(
        self, app: Application, period: OfficerPeriod, signed: Signed | None, now: datetime
    ) -> dict[str, str]:
        return signatures.check_signed_application(
            app,
            period,
            signed,
            now,
            required=self.require_signature,
            resolve_officer=lambda p: self._registered(p, now),
        )

    def _signed_statement(
        self,
        auth: Authorisation,
        action: str,
        period: OfficerPeriod,
        text: str,
        signed: Signed | None,
    ) -> tuple[str, dict[str, str]]:
        used = [bytes(r["signed_bytes"]) for r in rows.signatures(self.conn, auth.ref)]
        return signatures.check_signed_statement(
            auth, action, period, text, signed, required=self.require_signature, used=used
        )

    def _keep_signature(
        self, ref: str, kind: str, period: OfficerPeriod, now: datetime, signed: Signed
    ) -> None:
        assert period.ssh_key is not None  # verified against it
        rows.insert_signature(
            self.conn,
            ref,
            kind,
            period.principal,
            now,
            signed.signed_bytes,
            signed.signature,
            period.ssh_key,
            signatures.sshsig.fingerprint(period.ssh_key),
        )

    def signatures(self, ref: str) -> list[dict[str, Any]]:
        """The signed acts of `ref` (bytes as signed, signature, officer, key fingerprint)."""
        return [dict(r) for r in rows.signatures(self.conn, self._require(ref).ref)]

    def ratify(
        self, ref: str, officer: str, note: str = "", signed: Signed | None = None
    ) -> Authorisation:
        with self._write("ratify", ref) as now:
            auth = self._require(ref)
            period = self.officer_at(officer, now)
            who = period.officer
            expiry = rules.check_ratify(auth, who, now)
            note, sig = self._signed_statement(auth, "ratify", period, note, signed)
            self._append(auth.ref, EventKind.RATIFY, now, officer=who, text=note, expiry=expiry)
            if signed is not None:
                self._keep_signature(auth.ref, "ratify", period, now, signed)
            self._audit(
                Action.AUTH_RATIFY,
                [auth.ref],
                officer=who.as_dict(),
                expiry=format_utc(expiry),
                note_sha256=sha256(note),
                **({"signature": sig} if sig else {}),
            )
        return self._require(ref)

    def renew(
        self, ref: str, officer: str, results: str, signed: Signed | None = None
    ) -> Authorisation:
        with self._write("renew", ref) as now:
            auth = self._require(ref)
            period = self.officer_at(officer, now)
            who = period.officer
            text, sig = self._signed_statement(auth, "renew", period, results, signed)
            expiry = rules.check_renew(auth, who, text, now, window_days=self.renewal_window_days)
            text = text.strip()
            self._append(auth.ref, EventKind.RENEW, now, officer=who, text=text, expiry=expiry)
            if signed is not None:
                self._keep_signature(auth.ref, "renew", period, now, signed)
            self._audit(
                Action.AUTH_RENEW,
                [auth.ref],
                officer=who.as_dict(),
                previous_expiry=format_utc(auth.expiry),
                expiry=format_utc(expiry),
                results_sha256=sha256(text),
                **({"signature": sig} if sig else {}),
            )
        return self._require(ref)

    def review(
        self, ref: str, officer: str, note: str, signed: Signed | None = None
    ) -> Authorisation:
        with self._write("review", ref) as now:
            auth = self._require(ref)
            period = self.officer_at(officer, now)
            who = period.officer
            note, sig = self._signed_statement(auth, "review", period, note, signed)
            rules.check_review(auth, who, note, now)
            self._append(auth.ref, EventKind.REVIEW, now, officer=who, text=note.strip())
            if signed is not None:
                self._keep_signature(auth.ref, "review", period, now, signed)
            self._audit(
                Action.AUTH_REVIEW,
                [auth.ref],
                officer=who.as_dict(),
                note_sha256=sha256(note.strip()),
                **({"signature": sig} if sig else {}),
            )
        return self._require(ref)

    def cancel(self, ref: str, reason: str, officer: str | None = None) -> Authorisation:
        """Cancel at once, unsigned: by the audit officer (the login user), a registered officer
        (`officer`), or an assigned investigator (the login user's investigator mapping); never
        by the subject, whoever claims to act."""
        with self._write("cancel", ref) as now:
            auth = self._require(ref)
            who = self._registered(officer, now) if officer is not None else None
            login_principal = rows.investigator_for_login(self.conn, self.actor)
            for principal in {who.principal if who else None, login_principal}:
                rules.check_cancel(auth, reason, now, actor_principal=principal)
            self._append(auth.ref, EventKind.CANCEL, now, officer=who, text=reason.strip())
            self._audit(
                Action.AUTH_CANCEL,
                [auth.ref],
                subject=auth.subject,
                officer=who.as_dict() if who else None,
                reason_sha256=sha256(reason.strip()),
                cancelled_at=format_utc(now),
            )
        return self._require(ref)

    def assign(self, ref: str, investigator: str) -> Authorisation:
        """Assign an investigator; the key follows when a holder runs `lbm keys rewrap`."""
        with self._write("assign", ref) as now:
            auth = self._require(ref)
            inv = self._active_investigator(investigator)
            rules.check_assign(auth, inv.principal)
            if investigator in assignees(self.conn, auth.ref):
                raise RuleViolation(f"investigator {investigator} is already assigned to {ref}")
            rows.insert_assignment(self.conn, auth.ref, investigator, now, self.actor)
            self._append(auth.ref, EventKind.ASSIGN, now, investigators=(investigator,))
            self._audit(Action.AUTH_ASSIGN, [auth.ref], investigator=investigator, rewrap_due=True)
        return self._require(ref)

    def record_rewrap(self, ref: str, investigators: Sequence[str]) -> Authorisation:
        """Note that the authorisation key is now wrapped to exactly `investigators` (plus the
        custodians). Called by `lbm keys rewrap`, which audits the key operation itself."""
        with self._write("rewrap", ref) as now:
            auth = self._require(ref)
            self._append(auth.ref, EventKind.REWRAP, now, investigators=tuple(investigators))
        return self._require(ref)

    # -- queries -------------------------------------------------------------------------------
    def get(self, ref: str) -> Authorisation:
        return self._require(ref)

    def current_assignees(self, auth: Authorisation) -> tuple[str, ...]:
        """Assigned investigators who are still registered: whom a rewrap wraps to."""
        out = []
        for name in assignees(self.conn, auth.ref):
            inv = rows.investigator(self.conn, name)
            if inv is not None and inv.active:
                out.append(name)
        return tuple(out)

    def rewrap_due(self, auth: Authorisation) -> bool:
        return set(self.current_assignees(auth)) != set(auth.wrapped_to)

    def list(self, *, include_ended: bool = False) -> list[ListedAuthorisation]:
        now = self.clock.now()
        out = []
        for auth in load_all(self.conn):
            state = auth.state(now)
            due = self.rewrap_due(auth)  # investigators retrieve long after expiry too
            if not include_ended and state in ("expired", "cancelled") and not due:
                continue
            out.append(ListedAuthorisation(auth, state, rules.warnings(auth, now), due))
        return out

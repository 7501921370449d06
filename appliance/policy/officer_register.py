"""Changes to the officer register (`lbm officer add|end|key`), each checked, recorded and audited.

The register is never loaded from the identity feed: an officer exists for the policy only once
added here. Every change runs in the registry's transaction and is audited inside it
(`officer_add`, `officer_end`, `officer_key`); a refused change is audited as `auth_refused`.
With `[policy] require_officer_signature`, the caller passes the change's signed bytes and
signature, already verified against `[policy] register_signers`; they are kept in the row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appliance.policy import RuleViolation, officers, rules
from appliance.policy import officers_store as officer_rows
from appliance.policy.model import OfficerPeriod
from appliance.policy.registry import Registry
from store import sshsig
from store.audit import Action
from store.clock import format_utc


@dataclass(frozen=True)
class SignedChange:
    """The bytes a register signer signed, their detached SSHSIG signature, and what the audit
    entry records of them (hashes, signer), already verified by the caller."""

    signed_bytes: bytes
    signature: bytes
    fields: dict[str, str]

    def audit_fields(self) -> dict[str, str]:
        return dict(self.fields)


def key_fingerprint(ssh_key: str) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it."""
    return sshsig.fingerprint(ssh_key)


class OfficerRegister:
    """The officer register's changes, through a `Registry` (its connection, clock, audit)."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry

    def _record(
        self,
        kind: str,
        action: Action,
        principal: str,
        now: datetime,
        signed: SignedChange | None,
        audit: Mapping[str, object],
        **row: Any,
    ) -> None:
        """Append one register row and its audit entry (inside the caller's transaction)."""
        reg = self.reg
        officer_rows.append(
            reg.conn,
            principal=principal,
            kind=kind,
            at=now,
            actor=reg.actor,
            signed_bytes=signed.signed_bytes if signed else None,
            signature=signed.signature if signed else None,
            **row,
        )
        fields = {**audit, **({"signed": signed.audit_fields()} if signed else {})}
        reg._audit(action, (), principal=principal, **fields)

    def add(
        self,
        principal: str,
        *,
        name: str,
        role: str,
        rank: str,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        ssh_key: str | None = None,
        signed: SignedChange | None = None,
    ) -> OfficerPeriod:
        """Register a new period of `principal` (from now unless `valid_from`)."""
        reg = self.reg
        with reg._write("officer_add", None) as now:
            start = valid_from or now
            existing = reg.officer_periods(principal).get(principal, [])
            principal, name, role, parsed_rank = officers.check_registration(
                principal, name, role, rank, start, valid_to, existing
            )
            key = officers.parse_ssh_key(ssh_key) if ssh_key else None
            audit: dict[str, object] = {
                "name": name,
                "role": role,
                "rank": parsed_rank.value,
                "valid_from": format_utc(start),
                "valid_to": format_utc(valid_to) if valid_to else None,
                "ssh_key_fingerprint": key_fingerprint(key) if key else None,
            }
            self._record(
                "add", Action.OFFICER_ADD, principal, now, signed, audit,
                name=name, role=role, rank=parsed_rank, valid_from=start, valid_to=valid_to,
                ssh_key=key,
            )  # fmt: skip
        return self.current(principal, start)

    def end(
        self, principal: str, at: datetime | None = None, signed: SignedChange | None = None
    ) -> OfficerPeriod:
        """End the period of `principal` in force at `at` (default now), at `at`."""
        reg = self.reg
        with reg._write("officer_end", None) as now:
            when = at or now
            rules.check_principal(principal, "officer")
            mine = reg.officer_periods(principal).get(principal, [])
            officers.period_to_end(mine, principal, when)
            audit = {"valid_to": format_utc(when)}
            self._record("end", Action.OFFICER_END, principal, now, signed, audit, valid_to=when)
        return reg.officer_periods(principal)[principal][-1]

    def set_key(
        self, principal: str, ssh_key: str, signed: SignedChange | None = None
    ) -> OfficerPeriod:
        """Replace the SSH key of `principal`'s latest period."""
        reg = self.reg
        with reg._write("officer_key", None) as now:
            rules.check_principal(principal, "officer")
            mine = reg.officer_periods(principal).get(principal, [])
            if not mine:
                raise RuleViolation(f"officer {principal} is not in the officer register")
            key = officers.parse_ssh_key(ssh_key)
            audit = {"ssh_key_fingerprint": key_fingerprint(key)}
            self._record("key", Action.OFFICER_KEY, principal, now, signed, audit, ssh_key=key)
        return reg.officer_periods(principal)[principal][-1]

    def current(self, principal: str, at: datetime) -> OfficerPeriod:
        mine = self.reg.officer_periods(principal).get(principal, [])
        for period in reversed(mine):
            if period.valid_at(at) or period.valid_from >= at:
                return period
        return mine[-1]

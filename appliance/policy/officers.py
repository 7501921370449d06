"""The officer register's rules, without SQL: what a registration may say, and who an officer
was at an instant.

The register (`officers_store`) keeps every change as an append-only event: `add` (a new period:
name, role, rank, valid from/to, SSH key), `end` (the period in force at T ends at T) and `key`
(the period's SSH key is replaced). `periods()` folds those events into each officer's periods;
`officer_at()` answers "who was PRINCIPAL at T", refusing with a message that says what the
register holds. Roles and ranks are those of DECISIONS.md; a role and rank that cannot go together
are refused by `rules.check_officer_standing` when registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from appliance.policy import InvalidInput, RuleViolation, rules
from appliance.policy.model import OfficerPeriod, Rank
from store.clock import format_utc
from store.sshsig_wire import SshsigError, blob_fingerprint, parse_key_line


@dataclass(frozen=True)
class OfficerEvent:
    """One row of the officer register, as stored."""

    seq: int
    principal: str
    kind: str  # "add", "end" or "key"
    at: datetime  # when it was recorded
    actor: str
    name: str = ""
    role: str = ""
    rank: Rank | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    ssh_key: str | None = None


def parse_ssh_key(text: str) -> str:
    """An OpenSSH public key line (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256...), checked and
    normalised to `TYPE BASE64` (comment dropped)."""
    try:
        blob_fingerprint(parse_key_line(text)[0])  # `store.sshsig.fingerprint`, lighter to import
    except SshsigError as exc:
        raise InvalidInput(f"SSH key: {exc} (give the contents of officer_key.pub)") from None
    return " ".join(text.split()[:2])


def check_registration(
    principal: str,
    name: str,
    role: str,
    rank: str,
    valid_from: datetime,
    valid_to: datetime | None,
    existing: Sequence[OfficerPeriod],
) -> tuple[str, str, str, Rank]:
    """Validate a new period for `principal`; returns (principal, name, role, rank)."""
    principal = rules.check_principal(principal, "officer")
    name = rules.require_text(name, "the officer's name")
    role = rules.parse_role(role)
    parsed_rank = rules.parse_rank(rank)
    rules.check_officer_standing(role, parsed_rank)
    if valid_to is not None and valid_to <= valid_from:
        raise RuleViolation(
            f"officer {principal}: --to {format_utc(valid_to)} is not after --from "
            f"{format_utc(valid_from)}"
        )
    if existing and valid_from <= existing[-1].valid_from:
        raise RuleViolation(
            f"officer {principal}: a new period must start after the current one "
            f"(from {format_utc(existing[-1].valid_from)})"
        )
    return principal, name, role, parsed_rank


def periods(events: Iterable[OfficerEvent]) -> dict[str, list[OfficerPeriod]]:
    """Fold register events (oldest first) into each principal's periods (oldest first)."""
    out: dict[str, list[OfficerPeriod]] = {}
    for ev in events:
        mine = out.setdefault(ev.principal, [])
        if ev.kind == "add":
            assert ev.rank is not None and ev.valid_from is not None
            start = ev.valid_from
            for i, p in enumerate(mine):  # a new period ends any earlier one still open then
                if p.valid_from < start and (p.valid_to is None or p.valid_to > start):
                    mine[i] = replace(p, valid_to=start)
            mine.append(
                OfficerPeriod(
                    ev.principal,
                    ev.name,
                    ev.role,
                    ev.rank,
                    start,
                    ev.valid_to,
                    ev.ssh_key,
                    ev.at,
                    ev.seq,
                )
            )
        elif ev.kind == "end" and ev.valid_to is not None:
            for i, p in enumerate(mine):
                if p.valid_at(ev.valid_to) or (p.valid_from == ev.valid_to):
                    mine[i] = replace(p, valid_to=ev.valid_to)
        elif ev.kind == "key" and mine:
            mine[-1] = replace(mine[-1], ssh_key=ev.ssh_key)
    return {k: v for k, v in out.items() if v}


def describe(period: OfficerPeriod) -> str:
    """What the register says about one period, for messages."""
    until = format_utc(period.valid_to) if period.valid_to else "open"
    return f"{period.role} ({period.rank.value}) from {format_utc(period.valid_from)} until {until}"


def officer_at(
    register: dict[str, list[OfficerPeriod]], principal: str, at: datetime
) -> OfficerPeriod:
    """The period of `principal` in force at `at`; refused (naming the register) otherwise."""
    mine = register.get(principal)
    if not mine:
        raise RuleViolation(
            f"officer {principal} is not in the officer register (lbm officer add {principal} ...)"
        )
    for period in reversed(mine):
        if period.valid_at(at):
            return period
    raise RuleViolation(
        f"officer {principal} holds no registered role at {format_utc(at)}; the register has "
        + "; ".join(describe(p) for p in mine)
    )


def period_to_end(periods_: Sequence[OfficerPeriod], principal: str, at: datetime) -> None:
    """Refuse ending an officer who holds no role at `at`."""
    if not any(p.valid_at(at) for p in periods_):
        raise RuleViolation(
            f"officer {principal} holds no registered role at {format_utc(at)} to end"
            + ("; the register has " + "; ".join(describe(p) for p in periods_) if periods_ else "")
        )

"""`lbm officer`: the officer register (add, list, show, end, key).

Officers are registry facts with validity windows, never loaded from the identity feed. The
acting officer's name, role and rank on every `lbm auth` act come from here, at the instant of
the act. Each change is audited (`officer_add`, `officer_end`, `officer_key`); a refused change
prints one line and exits 1 (audited as `auth_refused`); a malformed value exits 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.cli.textsafe import safe
from appliance.config import ConfigError
from appliance.policy import InvalidInput, PolicyError, RuleViolation
from appliance.policy.model import OfficerPeriod
from appliance.policy.officer_register import OfficerRegister, SignedChange
from appliance.policy.registry import Registry
from store import StoreError
from store.clock import format_utc


def parse_instant(value: str, what: str) -> datetime:
    """An ISO 8601 instant with `Z` or an offset; a time without a time zone is refused."""
    raw = value.strip()
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "Zz" else raw)
    except (ValueError, IndexError):
        raise InvalidInput(f"{what} {value!r}: not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise InvalidInput(
            f"{what} {value!r}: has no time zone; add Z (UTC) or an offset such as +01:00"
        )
    return parsed


def read_ssh_key(value: str) -> str:
    """`--ssh-key`: a public key line, or a file holding one (e.g. officer_key.pub)."""
    if value.lstrip().startswith(("ssh-", "ecdsa-", "rsa-")):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"--ssh-key {value}: neither a public key line nor a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--ssh-key {value}: cannot read ({exc})") from None


@contextmanager
def open_register(app: App) -> Iterator[tuple[Registry, OfficerRegister]]:
    app.require_initialised()
    reg = Registry.open(app.paths, clock=app.clock, actor=app.actor, audit=app.audit)
    try:
        yield reg, OfficerRegister(reg)
    except InvalidInput as exc:
        fail(str(exc), EXIT_USAGE)
    except (PolicyError, StoreError) as exc:
        fail(str(exc), EXIT_FAIL)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        reg.close()


def register_signature(app: App) -> SignedChange | None:
    """With `[policy] require_officer_signature`, a register change must be signed by a key in
    `[policy] register_signers`; the CLI refuses until that signature is given."""
    if not app.config["policy.require_officer_signature"]:
        return None
    raise RuleViolation(
        "the officer register accepts changes signed by a register signer only "
        "([policy] require_officer_signature); give --signature"
    )


def period_line(p: OfficerPeriod) -> str:
    until = format_utc(p.valid_to) if p.valid_to else "open"
    key = "key" if p.ssh_key else "no key"
    return (
        f"{p.principal}  {safe(p.name)}  {p.role}  {p.rank.value}  "
        f"{format_utc(p.valid_from)} -> {until}  ({key})"
    )


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


@click.group("officer")
def officer() -> None:
    """The officer register: who may authorise, in which role and rank, from when to when."""


@officer.command("add")
@click.argument("principal")
@click.option("--name", required=True, metavar="NAME", help="the officer's name")
@click.option("--role", required=True, metavar="ROLE", help="e.g. head_of_professional_standards")
@click.option("--rank", required=True, metavar="RANK", help="e.g. superintendent, or staff")
@click.option("--from", "valid_from", metavar="ISO8601", help="role held from (default now)")
@click.option("--to", "valid_to", metavar="ISO8601", help="role held until (default open)")
@click.option("--ssh-key", metavar="PUBKEY|FILE", help="the officer's SSH public key (signing)")
@json_option
@pass_app
def add(
    app: App,
    principal: str,
    name: str,
    role: str,
    rank: str,
    valid_from: str | None,
    valid_to: str | None,
    ssh_key: str | None,
    as_json: bool,
) -> None:
    """Register an officer's role and rank (a new period when already registered)."""
    with open_register(app) as (reg, officers):
        try:
            signed = register_signature(app)
        except RuleViolation as exc:
            reg.audit_refusal("officer_add", None, str(exc))
            raise
        period = officers.add(
            principal,
            name=name,
            role=role,
            rank=rank,
            valid_from=parse_instant(valid_from, "--from") if valid_from else None,
            valid_to=parse_instant(valid_to, "--to") if valid_to else None,
            ssh_key=read_ssh_key(ssh_key) if ssh_key else None,
            signed=signed,
        )
    emit(period.as_dict(), as_json, f"registered {period_line(period)}")


@officer.command("end")
@click.argument("principal")
@click.option("--at", "at", metavar="ISO8601", help="when the role ends (default now)")
@json_option
@pass_app
def end(app: App, principal: str, at: str | None, as_json: bool) -> None:
    """End an officer's current role."""
    with open_register(app) as (reg, officers):
        try:
            signed = register_signature(app)
        except RuleViolation as exc:
            reg.audit_refusal("officer_end", None, str(exc))
            raise
        period = officers.end(principal, parse_instant(at, "--at") if at else None, signed)
    emit(period.as_dict(), as_json, f"ended {period_line(period)}")


@officer.command("key")
@click.argument("principal")
@click.argument("ssh_key", metavar="PUBKEY|FILE")
@json_option
@pass_app
def key(app: App, principal: str, ssh_key: str, as_json: bool) -> None:
    """Replace an officer's SSH public key (the key their statements are signed with)."""
    with open_register(app) as (reg, officers):
        try:
            signed = register_signature(app)
        except RuleViolation as exc:
            reg.audit_refusal("officer_key", None, str(exc))
            raise
        period = officers.set_key(principal, read_ssh_key(ssh_key), signed)
    emit(period.as_dict(), as_json, f"new key for {period_line(period)}")


@officer.command("list")
@click.option("--all", "include_ended", is_flag=True, help="include ended periods")
@json_option
@pass_app
def list_(app: App, include_ended: bool, as_json: bool) -> None:
    """List registered officers (their periods in force now, or all with --all)."""
    with open_register(app) as (reg, _):
        now = app.clock.now()
        items: list[OfficerPeriod] = []
        for mine in reg.officer_periods().values():
            items.extend(p for p in mine if include_ended or p.valid_at(now) or p.valid_from > now)
    data: list[dict[str, Any]] = [p.as_dict() for p in items]
    text = "\n".join(period_line(p) for p in items) if items else "no officers registered"
    emit(data, as_json, text)


@officer.command("show")
@click.argument("principal")
@json_option
@pass_app
def show(app: App, principal: str, as_json: bool) -> None:
    """Show every period of one officer."""
    with open_register(app) as (reg, _):
        mine = reg.officer_periods(principal).get(principal, [])
        if not mine:
            raise RuleViolation(f"officer {principal!r} is not in the officer register")
    emit([p.as_dict() for p in mine], as_json, "\n".join(period_line(p) for p in mine))

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

from appliance.cli.app import App, emit, pass_app
from appliance.cli.auth_common import open_registry
from appliance.cli.signed_files import read_signed, register_signers, signed_options
from appliance.cli.textsafe import safe
from appliance.policy import InvalidInput, RuleViolation, values
from appliance.policy import officer_signatures as signatures
from appliance.policy.model import OfficerPeriod
from appliance.policy.officer_register import OfficerRegister, SignedChange, key_fingerprint
from appliance.policy.registry import Registry
from store.clock import format_utc


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
    """The registry and its officer register; errors become one-line messages (as `lbm auth`)."""
    with open_registry(app) as reg:
        yield reg, OfficerRegister(reg)


def register_change(
    app: App,
    reg: Registry,
    action: str,
    principal: str,
    given: dict[str, str | None],
    statement: Path | None,
    signature: Path | None,
) -> tuple[dict[str, str | None], SignedChange | None]:
    """The change's fields and, when signed, the verified signature of a register signer
    (`[policy] register_signers`). With `[policy] require_officer_signature` a change must be
    signed. With a signed statement, the change is exactly the statement: an option given too
    must say the same."""
    if signature is None:
        if statement is not None:
            raise InvalidInput("--statement needs --signature (a register signer's SSHSIG)")
        if app.config["policy.require_officer_signature"]:
            raise RuleViolation(
                "the officer register accepts only changes signed by a register signer "
                "([policy] require_officer_signature): give --statement CHANGE.toml and "
                "--signature CHANGE.toml.sig (ssh-keygen -Y sign -n lbm-officer-register)"
            )
        return given, None
    if statement is None:
        raise InvalidInput("--signature needs --statement (the signed change)")
    signers_text, signers_path = register_signers(str(app.config["policy.register_signers"]))
    signed = read_signed(statement, signature, "--statement", "a register signer")
    assert signed is not None
    fields = signatures.verify_register_change(signed, signers_text, signers_path, reg.clock.now())
    change = signatures.parse_change(signed.signed_bytes)
    if change["action"] != action or change["principal"] != principal:
        raise RuleViolation(
            f"the signed change is {change['action']} of {change['principal']}, not {action} "
            f"of {principal}"
        )
    merged: dict[str, str | None] = {}
    for key, value in given.items():
        signed_value = change.get(key)
        text = None if signed_value is None else str(signed_value)
        if value is not None and not _same(key, value, text):
            raise RuleViolation(f"--{key}: {value!r} differs from the signed change ({text!r})")
        merged[key] = text if text is not None else None
    if given.get("ssh_key") is not None and "ssh_key" not in change:
        raise RuleViolation("--ssh-key: the signed change names no key")
    return merged, SignedChange(signed.signed_bytes, signed.signature, fields)


def _time(value: str | None, what: str) -> datetime | None:
    return values.parse_time(value, what) if value else None


def _same(key: str, given: str, signed: str | None) -> bool:
    if signed is None:
        return False
    if key in ("from", "to", "at"):
        return values.parse_time(given, f"--{key}") == values.parse_time(signed, key)
    if key == "ssh_key":
        return given.split()[:2] == signed.split()[:2]
    return given == signed


def period_line(p: OfficerPeriod) -> str:
    until = format_utc(p.valid_to) if p.valid_to else "open"
    key = "key" if p.ssh_key else "no key"
    return (
        f"{p.principal}  {safe(p.name)}  {p.role}  {p.rank.value}  "
        f"{format_utc(p.valid_from)} -> {until}  ({key})"
    )


TABLE_COLUMNS = ("PRINCIPAL", "NAME", "ROLE", "RANK", "FROM", "UNTIL", "SSH KEY")


def period_table(periods: list[OfficerPeriod]) -> str:
    """Officer periods in aligned columns (names escaped; keys by fingerprint)."""
    rows = [TABLE_COLUMNS] + [
        (
            p.principal,
            safe(p.name),
            p.role,
            p.rank.value,
            format_utc(p.valid_from),
            format_utc(p.valid_to) if p.valid_to else "open",
            key_fingerprint(p.ssh_key) if p.ssh_key else "-",
        )
        for p in periods
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


@click.group("officer")
def officer() -> None:
    """The officer register: who may authorise, in which role and rank, from when to when."""


change_options = signed_options(
    "the change as signed by a register signer (TOML)",
    "a register signer's SSHSIG over --statement",
)


@officer.command("add")
@click.argument("principal")
@click.option("--name", metavar="NAME", help="the officer's name")
@click.option("--role", metavar="ROLE", help="e.g. head_of_professional_standards")
@click.option("--rank", metavar="RANK", help="e.g. superintendent, or staff")
@click.option("--from", "valid_from", metavar="ISO8601", help="role held from (default now)")
@click.option("--to", "valid_to", metavar="ISO8601", help="role held until (default open)")
@click.option("--ssh-key", metavar="PUBKEY|FILE", help="the officer's SSH public key (signing)")
@change_options
@json_option
@pass_app
def add(
    app: App,
    principal: str,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Register an officer's role and rank (a new period when already registered)."""
    with open_register(app) as (reg, officers):
        given = {
            "name": options["name"],
            "role": options["role"],
            "rank": options["rank"],
            "from": options["valid_from"],
            "to": options["valid_to"],
            "ssh_key": read_ssh_key(str(options["ssh_key"])) if options["ssh_key"] else None,
        }
        try:
            change, signed = register_change(
                app, reg, "officer_add", principal, given, statement, signature
            )
        except RuleViolation as exc:
            reg.audit_refusal("officer_add", None, str(exc))
            raise
        missing = [f"--{k}" for k in ("name", "role", "rank") if not change.get(k)]
        if missing:
            raise InvalidInput(f"missing {', '.join(missing)}")
        period = officers.add(
            principal,
            name=str(change["name"]),
            role=str(change["role"]),
            rank=str(change["rank"]),
            valid_from=_time(change.get("from"), "--from"),
            valid_to=_time(change.get("to"), "--to"),
            ssh_key=change.get("ssh_key"),
            signed=signed,
        )
    emit(period.as_dict(), as_json, f"registered {period_line(period)}")


@officer.command("end")
@click.argument("principal")
@click.option("--at", "at", metavar="ISO8601", help="when the role ends (default now)")
@change_options
@json_option
@pass_app
def end(
    app: App,
    principal: str,
    at: str | None,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """End an officer's current role."""
    with open_register(app) as (reg, officers):
        try:
            change, signed = register_change(
                app, reg, "officer_end", principal, {"at": at}, statement, signature
            )
        except RuleViolation as exc:
            reg.audit_refusal("officer_end", None, str(exc))
            raise
        period = officers.end(principal, _time(change.get("at"), "--at"), signed)
    emit(period.as_dict(), as_json, f"ended {period_line(period)}")


@officer.command("key")
@click.argument("principal")
@click.argument("ssh_key", metavar="PUBKEY|FILE", required=False)
@change_options
@json_option
@pass_app
def key(
    app: App,
    principal: str,
    ssh_key: str | None,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """Replace an officer's SSH public key (the key their statements are signed with)."""
    with open_register(app) as (reg, officers):
        given = {"ssh_key": read_ssh_key(ssh_key) if ssh_key else None}
        try:
            change, signed = register_change(
                app, reg, "officer_key", principal, given, statement, signature
            )
        except RuleViolation as exc:
            reg.audit_refusal("officer_key", None, str(exc))
            raise
        if not change.get("ssh_key"):
            raise InvalidInput("missing PUBKEY|FILE")
        period = officers.set_key(principal, str(change["ssh_key"]), signed)
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
    text = period_table(items) if items else "no officers registered"
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
    emit([p.as_dict() for p in mine], as_json, period_table(mine))

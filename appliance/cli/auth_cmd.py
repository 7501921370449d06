"""`lbm auth`: grant, urgent, ratify, renew, review, cancel, assign, list, show, history.

Every subcommand takes `--json`. A refusal by one of the policy's rules prints one line
`lbm: error: ...` and exits 1 (and is audited as `auth_refused`); a malformed value or a
configuration problem exits 2. Expiry is computed, never typed. `snapshot_source(app)` builds
the `SnapshotSource` daemons use, wired to this data directory and its config file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.cli.textsafe import safe
from appliance.config import ConfigError, load_config
from appliance.policy import InvalidInput, PolicyError, RuleViolation, rules
from appliance.policy import application as application_form
from appliance.policy.model import Authorisation, Officer
from appliance.policy.registry import Registry
from appliance.policy.snapshot import SnapshotSource
from store import StoreError
from store.clock import format_utc


def snapshot_source(app: App, *, interval: float = 0.25) -> SnapshotSource:
    """The policy snapshot source for a daemon: registry changes and config edits reload it."""
    config_path = app.config_path

    def load_dnd() -> list[str]:
        return list(load_config(config_path, required=False).values["do_not_decrypt.hosts"])

    return SnapshotSource(
        app.paths, config_path=config_path, load_do_not_decrypt=load_dnd, interval=interval
    )


# -- shared plumbing ---------------------------------------------------------------------------
@contextmanager
def _registry(app: App) -> Iterator[Registry]:
    """Open the registry; turn policy and store errors into one-line messages and exit codes."""
    app.require_initialised()
    reg = Registry.open(
        app.paths,
        clock=app.clock,
        actor=app.actor,
        audit=app.audit,
        custodians=app.config["keys.custodians"],
        renewal_window_days=app.config["policy.renewal_window_days"],
    )
    try:
        yield reg
    except InvalidInput as exc:
        fail(str(exc), EXIT_USAGE)
    except RuleViolation as exc:
        fail(str(exc), EXIT_FAIL)
    except (PolicyError, StoreError) as exc:
        fail(str(exc), EXIT_FAIL)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        reg.close()


def _t(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


def auth_dict(
    auth: Authorisation, reg: Registry, now: datetime, *, detail: bool = False
) -> dict[str, Any]:
    app = auth.application
    data: dict[str, Any] = {
        "ref": auth.ref,
        "subject": auth.subject,
        "case_type": auth.case_type.value,
        "purposes": [p.value for p in app.purposes],
        "channels": [c.value for c in auth.channels],
        "urgent": auth.urgent,
        "start": _t(auth.start),
        "expiry": _t(auth.expiry),
        "ratified_at": _t(auth.ratified_at),
        "cancelled_at": _t(auth.cancelled_at),
        "state": auth.state(now),
        "flags": list(rules.warnings(auth, now)),
        "next_review": _t(rules.next_review(auth)),
        "renewals": auth.renewals,
        "officer": app.officer.as_dict(),
        "open_do_not_decrypt": auth.open_do_not_decrypt,
        "retention_days": app.retention_days,
        "assignees": list(reg.current_assignees(auth)),
        "wrapped_to": list(auth.wrapped_to),
        "rewrap_due": reg.rewrap_due(auth),
    }
    if detail:
        data.update(
            {
                "necessity": app.necessity,
                "proportionality": app.proportionality,
                "collateral": app.collateral,
                "ripa_considered": app.ripa_considered,
                "ripa_note": app.ripa_note,
                "cancel_reason": auth.cancel_reason,
                "public_key": auth.public_key,
                "created_at": _t(auth.created_at),
                "history": [e.as_dict() for e in auth.history],
            }
        )
    return data


def _flags(data: dict[str, Any]) -> list[str]:
    return list(data["flags"]) + (["rewrap_due"] if data["rewrap_due"] else [])


def _summary(data: dict[str, Any]) -> str:
    flags = _flags(data)
    return (
        f"{data['ref']}  subject={data['subject']}  {data['state']}  "
        f"{data['start']} -> {data['expiry']}  channels={','.join(data['channels'])}"
        + (f"  [{', '.join(flags)}]" if flags else "")
    )


LIST_COLUMNS = (
    "REF",
    "SUBJECT",
    "STATE",
    "CASE TYPE",
    "CHANNELS",
    "OFFICER",
    "INVESTIGATORS",
    "START",
    "EXPIRY",
    "FLAGS",
)


def list_table(items: list[dict[str, Any]]) -> str:
    """`lbm auth list` as aligned columns (ids and enum values only; names escaped)."""
    rows = [LIST_COLUMNS] + [
        (
            d["ref"],
            d["subject"],
            d["state"],
            d["case_type"],
            ",".join(d["channels"]),
            d["officer"]["principal"],
            ",".join(d["assignees"]) or "-",
            d["start"],
            d["expiry"],
            ",".join(_flags(d)) or "-",
        )
        for d in items
    ]
    cells = [[safe(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(LIST_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _show_text(data: dict[str, Any]) -> str:
    lines = [_summary(data)]
    keys = (
        "case_type",
        "purposes",
        "urgent",
        "ratified_at",
        "cancelled_at",
        "cancel_reason",
        "officer",
        "next_review",
        "renewals",
        "assignees",
        "wrapped_to",
        "retention_days",
        "open_do_not_decrypt",
        "ripa_considered",
        "ripa_note",
        "necessity",
        "proportionality",
        "collateral",
        "public_key",
    )
    for key in keys:
        if key in data and data[key] not in (None, "", []):
            value = data[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            lines.append(f"  {key}: {safe(value)}")
    return "\n".join(lines)


officer_option = click.option(
    "--officer",
    "officer",
    metavar="PRINCIPAL",
    required=True,
    help="the acting officer's principal (name, role and rank come from the officer register)",
)


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


@click.group("auth")
def auth() -> None:
    """Authorisations: who is recorded in full, on which channels, until when."""


# -- grant and urgent --------------------------------------------------------------------------
def _application_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--from-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="read the application's fields from a TOML file (options override)",
        ),
        click.option("--ref", help="unique reference, e.g. CA1-2026-0042"),
        click.option("--subject", metavar="PRINCIPAL", help="principal to be monitored"),
        click.option("--case-type", help="criminal, officer_misconduct or staff_discipline"),
        click.option("--purpose", multiple=True, help="lawful purpose (repeat or comma list)"),
        click.option("--channel", multiple=True, help="web, email, packets (repeat or commas)"),
        click.option(
            "--officer",
            metavar="PRINCIPAL",
            help="authorising officer's principal (role and rank come from the officer register)",
        ),
        click.option("--necessity", metavar="TEXT"),
        click.option("--proportionality", metavar="TEXT"),
        click.option("--collateral", metavar="TEXT", help="collateral intrusion statement"),
        click.option("--ripa-considered", metavar="yes|no"),
        click.option("--ripa-note", metavar="TEXT"),
        click.option("--start", metavar="ISO8601", help="start (default now; never in the past)"),
        click.option(
            "--investigator",
            multiple=True,
            metavar="NAME",
            help="registered investigator (repeat or comma list)",
        ),
        click.option(
            "--open-do-not-decrypt",
            is_flag=True,
            default=None,
            help="also open servers on the do-not-decrypt list",
        ),
        click.option("--retention-days", type=int, metavar="N"),
        json_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


REGISTER_FIELDS = ("officer_name", "officer_role", "officer_rank")
"""Fields the officer register supplies; an application may not state them."""


def _read_application_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{path}: application file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: TOML syntax error: {exc}") from None
    for key in data:
        if str(key).replace("-", "_") in REGISTER_FIELDS:
            raise InvalidInput(
                f"{path}: {key}: comes from the officer register (lbm officer show), "
                "not the application"
            )
    return application_form.normalise_fields(data, f"{path}: ")


def _do_grant(app: App, urgent: bool, options: dict[str, Any]) -> None:
    as_json = options.pop("as_json")
    from_file = options.pop("from_file")
    request = "urgent" if urgent else "grant"
    with _registry(app) as reg:
        fields: dict[str, Any] = _read_application_file(from_file) if from_file else {}
        for key, value in options.items():
            if value not in (None, ()):
                fields[key] = list(value) if isinstance(value, tuple) else value
        now = app.clock.now()

        def resolve(principal: str) -> Officer:
            return reg.officer_at(principal, now).officer

        try:
            try:
                application = application_form.build_application(
                    fields, urgent=urgent, now=now, resolve_officer=resolve
                )
            except RuleViolation as exc:
                if "role" not in str(exc) and "rank" not in str(exc):
                    raise
                officer = resolve(str(fields["officer"]))
                raise RuleViolation(
                    f"the officer register has {officer.principal} as {officer.role} "
                    f"({officer.rank.value}): {exc}"
                ) from None
        except RuleViolation as exc:
            ref = fields.get("ref")
            reg.audit_refusal(request, ref if isinstance(ref, str) else None, str(exc))
            raise
        auth = reg.grant(application)
        data = auth_dict(auth, reg, app.clock.now(), detail=True)
    kind = "urgent authorisation" if urgent else "authorisation"
    emit(
        data,
        as_json,
        f"granted {kind} {auth.ref} for {auth.subject}: {data['start']} until {data['expiry']}",
    )


@auth.command("grant")
@_application_options
@pass_app
def grant(app: App, **options: Any) -> None:
    """Grant a standard authorisation (3 calendar months from its start)."""
    _do_grant(app, False, options)


@auth.command("urgent")
@_application_options
@pass_app
def urgent(app: App, **options: Any) -> None:
    """Grant an urgent authorisation (inspector or above; lapses after 72 h unless ratified)."""
    _do_grant(app, True, options)


# -- changes -----------------------------------------------------------------------------------
def _change(app: App, apply: Callable[[Registry], Authorisation]) -> dict[str, Any]:
    """Apply one registry change (audited by the registry; refusals and bad officer options
    become one-line errors inside `_registry`) and return the result as shown."""
    with _registry(app) as reg:
        return auth_dict(apply(reg), reg, app.clock.now())


@auth.command("ratify")
@click.argument("ref")
@officer_option
@click.option("--note", default="", metavar="TEXT")
@json_option
@pass_app
def ratify(app: App, ref: str, officer: str, note: str, as_json: bool) -> None:
    """Ratify an urgent authorisation within 72 h (a registered officer whose role fits the
    case type, other than the one who granted it)."""
    data = _change(app, lambda reg: reg.ratify(ref, officer, note))
    emit(data, as_json, f"ratified {ref}: now expires {data['expiry']}")


@auth.command("renew")
@click.argument("ref")
@officer_option
@click.option("--results", required=True, metavar="TEXT", help="update on the results so far")
@json_option
@pass_app
def renew(app: App, ref: str, officer: str, results: str, as_json: bool) -> None:
    """Renew within the renewal window before expiry: 3 calendar months from the current
    expiry."""
    data = _change(app, lambda reg: reg.renew(ref, officer, results))
    emit(data, as_json, f"renewed {ref}: now expires {data['expiry']}")


@auth.command("review")
@click.argument("ref")
@officer_option
@click.option("--note", required=True, metavar="TEXT", help="the review's findings")
@json_option
@pass_app
def review(app: App, ref: str, officer: str, note: str, as_json: bool) -> None:
    """Record the monthly review (a registered officer whose role fits the case type)."""
    data = _change(app, lambda reg: reg.review(ref, officer, note))
    emit(data, as_json, f"reviewed {ref}: next review due {data['next_review']}")


@auth.command("cancel")
@click.argument("ref")
@click.option("--reason", required=True, metavar="TEXT")
@click.option(
    "--officer",
    metavar="PRINCIPAL",
    help="a registered officer cancelling (without it, the login user cancels)",
)
@json_option
@pass_app
def cancel(app: App, ref: str, reason: str, officer: str | None, as_json: bool) -> None:
    """Cancel now, unsigned (takes effect on live traffic within seconds). Open to the audit
    officer, any registered officer and an assigned investigator; never the subject."""
    data = _change(app, lambda reg: reg.cancel(ref, reason, officer))
    emit(data, as_json, f"cancelled {ref} at {data['cancelled_at']}")


@auth.command("assign")
@click.argument("ref")
@click.argument("investigator")
@json_option
@pass_app
def assign(app: App, ref: str, investigator: str, as_json: bool) -> None:
    """Assign an investigator (the key follows on `lbm keys rewrap REF`)."""
    data = _change(app, lambda reg: reg.assign(ref, investigator))
    emit(
        data,
        as_json,
        f"assigned {investigator} to {ref}; rewrap due (lbm keys rewrap {ref} --identity FILE)",
    )


# -- queries -----------------------------------------------------------------------------------
@auth.command("list")
@click.option("--all", "include_ended", is_flag=True, help="include expired and cancelled")
@json_option
@pass_app
def list_(app: App, include_ended: bool, as_json: bool) -> None:
    """List authorisations in force, flagging review due, expiring soon, awaiting
    ratification and rewrap due."""
    with _registry(app) as reg:
        now = app.clock.now()
        items = [
            auth_dict(item.authorisation, reg, now)
            for item in reg.list(include_ended=include_ended)
        ]
    text = list_table(items) if items else "no authorisations"
    emit(items, as_json, text)


@auth.command("show")
@click.argument("ref")
@json_option
@pass_app
def show(app: App, ref: str, as_json: bool) -> None:
    """Show one authorisation with its statements."""
    with _registry(app) as reg:
        data = auth_dict(reg.get(ref), reg, app.clock.now(), detail=True)
    emit(data, as_json, _show_text(data))


@auth.command("history")
@click.argument("ref")
@json_option
@pass_app
def history(app: App, ref: str, as_json: bool) -> None:
    """Show an authorisation's append-only history."""
    with _registry(app) as reg:
        events = [e.as_dict() for e in reg.get(ref).history]
    lines = []
    for e in events:
        who = e["officer"]["principal"] if e["officer"] else e["actor"]
        extra = f" expiry={e['expiry']}" if e["expiry"] else ""
        if e["investigators"]:
            extra += f" investigators={','.join(e['investigators'])}"
        lines.append(
            f"{e['seq']:>5} {e['at']} {e['kind']:<7} by {who}{extra}"
            + (f": {safe(e['text'])}" if e["text"] else "")
        )
    emit(events, as_json, "\n".join(lines))

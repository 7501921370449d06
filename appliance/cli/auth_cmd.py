"""`lbm auth`: grant, urgent, ratify, renew, review, cancel, assign, list, show, history.

Every subcommand takes `--json`. A refusal by one of the policy's rules prints one line
`lbm: error: ...` and exits 1 (and is audited as `auth_refused`); a malformed value or a
configuration problem exits 2. Expiry is computed, never typed. `snapshot_source(app)` (from
`appliance.cli.policy_source`) builds the `SnapshotSource` daemons use, wired to this data
directory and its config file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.cli.auth_view import (
    ENDED,
    auth_dict,
    evidence_hashes,
    list_table,
    show_text,
    with_retention_review,
    write_evidence,
)
from appliance.cli.policy_source import snapshot_source as snapshot_source  # the daemons'
from appliance.cli.signed_files import read_file, read_signed, signed_options
from appliance.cli.textsafe import safe
from appliance.config import ConfigError
from appliance.evidence.retention import review_due_refs
from appliance.policy import InvalidInput, PolicyError, RuleViolation
from appliance.policy import application as application_form
from appliance.policy import officer_signatures as signatures
from appliance.policy.model import Authorisation, Officer
from appliance.policy.officer_signatures import Signed
from appliance.policy.registry import Registry
from store import StoreError
from store.audit import Action


# -- shared plumbing ---------------------------------------------------------------------------
@contextmanager
def open_registry(app: App) -> Iterator[Registry]:
    """Open the registry; turn policy and store errors into one-line messages and exit codes."""
    app.require_initialised()
    reg = Registry.open(
        app.paths,
        clock=app.clock,
        actor=app.actor,
        audit=app.audit,
        custodians=app.config["keys.custodians"],
        renewal_window_days=app.config["policy.renewal_window_days"],
        require_signature=app.config["policy.require_officer_signature"],
    )
    try:
        yield reg
    except InvalidInput as exc:
        fail(str(exc), EXIT_USAGE)
    except (PolicyError, StoreError) as exc:  # RuleViolation included
        fail(str(exc), EXIT_FAIL)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        reg.close()


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
        click.option(
            "--signature",
            type=click.Path(dir_okay=False, path_type=Path),
            help="the authorising officer's SSHSIG over the --from-file application "
            "(ssh-keygen -Y sign -n lbm-ca1)",
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


def _read_application_file(path: Path, data: bytes) -> dict[str, Any]:
    raw = signatures.load_toml(data, str(path))
    for key in raw:
        if str(key).replace("-", "_") in REGISTER_FIELDS:
            raise InvalidInput(
                f"{path}: {key}: comes from the officer register (lbm officer show), "
                "not the application"
            )
    return application_form.normalise_fields(raw, f"{path}: ")


def _signed(statement: Path | None, signature: Path | None, what: str) -> Signed | None:
    return read_signed(statement, signature, what, "the officer")


def _do_grant(app: App, urgent: bool, options: dict[str, Any]) -> None:
    as_json = options.pop("as_json")
    from_file = options.pop("from_file")
    signature = options.pop("signature")
    request = "urgent" if urgent else "grant"
    with open_registry(app) as reg:
        signed = _signed(from_file, signature, "--from-file")
        fields: dict[str, Any] = {}
        if from_file is not None:
            raw = signed.signed_bytes if signed else read_file(from_file, "application file")
            fields = _read_application_file(from_file, raw)
        for key, value in options.items():
            if value not in (None, ()):
                if signed is not None:
                    name = "--" + key.replace("_", "-")
                    raise InvalidInput(
                        f"{name}: with --signature every field comes from the signed file"
                    )
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
        auth = reg.grant(application, signed)
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


statement_options = signed_options(
    "the officer's signed statement (TOML naming ref, action, officer, expiry)",
    "the officer's SSHSIG over --statement (ssh-keygen -Y sign -n lbm-ca1)",
)


# -- changes -----------------------------------------------------------------------------------
def _change(app: App, apply: Callable[[Registry], Authorisation]) -> dict[str, Any]:
    """Apply one registry change (audited by the registry; refusals and bad officer options
    become one-line errors inside `open_registry`) and return the result as shown."""
    with open_registry(app) as reg:
        return auth_dict(apply(reg), reg, app.clock.now())


@auth.command("ratify")
@click.argument("ref")
@officer_option
@click.option("--note", default="", metavar="TEXT")
@statement_options
@json_option
@pass_app
def ratify(
    app: App,
    ref: str,
    officer: str,
    note: str,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """Ratify an urgent authorisation within 72 h (a registered officer whose role fits the
    case type, other than the one who granted it)."""
    data = _change(
        app,
        lambda reg: reg.ratify(ref, officer, note, _signed(statement, signature, "--statement")),
    )
    emit(data, as_json, f"ratified {ref}: now expires {data['expiry']}")


@auth.command("renew")
@click.argument("ref")
@officer_option
@click.option("--results", metavar="TEXT", help="update on the results so far")
@statement_options
@json_option
@pass_app
def renew(
    app: App,
    ref: str,
    officer: str,
    results: str | None,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """Renew within the renewal window before expiry: 3 calendar months from the current
    expiry."""
    if results is None and statement is None:
        fail("missing --results (or a signed --statement holding them)", EXIT_USAGE)
    data = _change(
        app,
        lambda reg: reg.renew(
            ref, officer, results or "", _signed(statement, signature, "--statement")
        ),
    )
    emit(data, as_json, f"renewed {ref}: now expires {data['expiry']}")


@auth.command("review")
@click.argument("ref")
@officer_option
@click.option("--note", metavar="TEXT", help="the review's findings")
@statement_options
@json_option
@pass_app
def review(
    app: App,
    ref: str,
    officer: str,
    note: str | None,
    statement: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """Record the monthly review (a registered officer whose role fits the case type)."""
    if note is None and statement is None:
        fail("missing --note (or a signed --statement holding it)", EXIT_USAGE)
    data = _change(
        app,
        lambda reg: reg.review(
            ref, officer, note or "", _signed(statement, signature, "--statement")
        ),
    )
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
    ratification and rewrap due; ended ones whose archive's retention review is due too."""
    with open_registry(app) as reg:
        now = app.clock.now()
        due = review_due_refs(reg.conn, app.paths, now, app.config["retention.review_days"])
        items = [
            with_retention_review(auth_dict(item.authorisation, reg, now), due)
            for item in reg.list(include_ended=include_ended or bool(due))
            if include_ended or item.authorisation.ref in due or item.state not in ENDED
            or item.rewrap_due
        ]  # fmt: skip
    text = list_table(items) if items else "no authorisations"
    emit(items, as_json, text)


@auth.command("show")
@click.argument("ref")
@click.option(
    "--evidence",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="also write the signed application and statements with their signatures to DIR "
    "(checkable with ssh-keygen -Y verify alone)",
)
@json_option
@pass_app
def show(app: App, ref: str, evidence: Path | None, as_json: bool) -> None:
    """Show one authorisation with its statements."""
    with open_registry(app) as reg:
        data = auth_dict(reg.get(ref), reg, app.clock.now(), detail=True)
        if evidence is not None:
            try:
                files = write_evidence(reg, data["ref"], evidence)
            except FileExistsError as exc:
                fail(f"{exc.filename}: exists already; choose an empty --evidence directory")
            except OSError as exc:
                fail(f"--evidence {evidence}: {exc.strerror or exc}")
            data["evidence"] = [str(f) for f in files]
            app.audit.append(
                Action.AUTH_VIEW,
                app.actor,
                refs=[data["ref"]],
                evidence_files=[f.name for f in files],
                signed_sha256=[s["signed_sha256"] for s in evidence_hashes(reg, data["ref"])],
            )
    text = show_text(data)
    if evidence is not None:
        text += f"\n  evidence: {len(data['evidence'])} files in {safe(evidence)}"
    emit(data, as_json, text)


@auth.command("history")
@click.argument("ref")
@json_option
@pass_app
def history(app: App, ref: str, as_json: bool) -> None:
    """Show an authorisation's append-only history."""
    with open_registry(app) as reg:
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

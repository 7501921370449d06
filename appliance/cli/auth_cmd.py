"""`lbm auth`: grant, urgent, ratify, renew, review, cancel, assign, list, show, history.

Every subcommand takes `--json`. A refusal by one of the policy's rules prints one line
`lbm: error: ...` and exits 1 (and is audited as `auth_refused`); a malformed value or a
configuration problem exits 2. Expiry is computed, never typed. `snapshot_source(app)` (from
`appliance.cli.policy_source`) builds the `SnapshotSource` daemons use, wired to this data
directory and its config file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_USAGE, App, emit, fail, pass_app
from appliance.cli.auth_common import json_option, officer_option, open_registry, signed
from appliance.cli.auth_grant import application_options, do_grant
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
from appliance.cli.signed_files import signed_options
from appliance.cli.textsafe import safe
from appliance.evidence.retention import review_due_refs
from appliance.policy.model import Authorisation
from appliance.policy.registry import Registry
from store.audit import Action


@click.group("auth")
def auth() -> None:
    """Authorisations: who is recorded in full, on which channels, until when."""


@auth.command("grant")
@application_options
@pass_app
def grant(app: App, **options: Any) -> None:
    """Grant a standard authorisation (3 calendar months from its start)."""
    do_grant(app, False, options)


@auth.command("urgent")
@application_options
@pass_app
def urgent(app: App, **options: Any) -> None:
    """Grant an urgent authorisation (inspector or above; lapses after 72 h unless ratified)."""
    do_grant(app, True, options)


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
        lambda reg: reg.ratify(ref, officer, note, signed(statement, signature, "--statement")),
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
            ref, officer, results or "", signed(statement, signature, "--statement")
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
            ref, officer, note or "", signed(statement, signature, "--statement")
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

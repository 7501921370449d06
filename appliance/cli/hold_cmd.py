"""`lbm archive hold REF --reason` and `lbm archive release REF --reason`: evidence holds.

A held archive (and every metadata partition holding one of REF's rows) is never removed by
retention. Only a login user mapped to an investigator assigned to REF, or a custodian, may hold
or release (never REF's subject); refusals are audited as `retention_refused`, holds as
`evidence_hold`, releases as `evidence_release`, each with the reason.
"""

from __future__ import annotations

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.evidence import holds
from appliance.evidence.access import AccessRefused, Acting, check_access
from appliance.policy.registry_store import load_one
from store import KeyError_
from store import sqlite as store_sqlite
from store.audit import Action
from store.keys import check_ref


def acting_on(app: App, ref: str, what: str) -> tuple[str, Acting]:
    """(REF as registered, who acts) or exit: 2 for a malformed REF, 1 refused (audited)."""
    app.require_initialised()
    try:
        check_ref(ref)
    except KeyError_ as exc:
        fail(str(exc), EXIT_USAGE)
    if app.paths.registry.exists():  # REF as registered (references ignore case)
        conn = store_sqlite.connect(app.paths.registry, readonly=True)
        try:
            auth = load_one(conn, ref)
        finally:
            conn.close()
        ref = auth.ref if auth is not None else ref
    try:
        acting = check_access(
            app.paths.registry, app.actor, ref, list(app.config["keys.custodians"])
        )
    except AccessRefused as exc:
        app.audit.append(Action.RETENTION_REFUSED, app.actor, refs=(ref,), what=what, why=str(exc))
        fail(f"{what} refused: {exc}", EXIT_FAIL)
    return ref, acting


def record(app: App, ref: str, what: str, reason: str, decision: str) -> holds.Event:
    """Check access and the reason, then write the row through `what`'s holds function."""
    canonical, acting = acting_on(app, ref, what)
    try:
        text = holds.check_reason(reason)
    except holds.HoldError as exc:
        fail(str(exc), EXIT_USAGE)
    event = holds.Event(canonical, decision, app.clock.now(), app.actor, acting.name, text)
    conn = store_sqlite.connect(app.paths.registry)
    try:
        if what == "hold":
            holds.place_hold(conn, event)
        elif what == "release":
            holds.release_hold(conn, event)
        else:
            holds.record_review(conn, event)
    except holds.HoldError as exc:
        fail(str(exc), EXIT_FAIL)
    finally:
        conn.close()
    return event


reason_option = click.option("--reason", required=True, help="why (audited)")


@click.command("hold")
@click.argument("ref")
@reason_option
@click.option("--json", "as_json", is_flag=True)
@pass_app
def hold(app: App, ref: str, reason: str, as_json: bool) -> None:
    """Place an evidence hold on REF: retention removes nothing of it until released."""
    event = record(app, ref, "hold", reason, "hold")
    app.audit.append(
        Action.EVIDENCE_HOLD, app.actor, refs=(event.ref,), reason=event.reason,
        investigator=event.investigator,
    )  # fmt: skip
    emit(event.as_dict(), as_json, f"{event.ref}: evidence hold placed")


@click.command("release")
@click.argument("ref")
@reason_option
@click.option("--json", "as_json", is_flag=True)
@pass_app
def release(app: App, ref: str, reason: str, as_json: bool) -> None:
    """Release REF's evidence hold: retention applies to it again."""
    event = record(app, ref, "release", reason, "release")
    app.audit.append(
        Action.EVIDENCE_RELEASE, app.actor, refs=(event.ref,), reason=event.reason,
        investigator=event.investigator,
    )  # fmt: skip
    emit(event.as_dict(), as_json, f"{event.ref}: evidence hold released")

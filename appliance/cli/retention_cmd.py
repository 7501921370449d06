"""`lbm retention`: what retention makes due, removing it, and review decisions.

lbm retention run [--apply] [--json]     list what is due (dry run); --apply removes it:
                                         metadata partitions deleted, archives crypto-shredded
lbm retention review REF --decision retain|delete --reason TEXT [--json]
                                         record a review decision (assigned investigator or
                                         custodian only; never REF's subject)

The rules are in `appliance/evidence/retention.py`; every run and decision is audited.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, App, emit, fail, pass_app
from appliance.cli.hold_cmd import acting_on, record
from appliance.cli.textsafe import safe
from appliance.evidence import retention_apply
from appliance.evidence.retention import Plan, Settings
from appliance.policy.registry_store import load_one
from store import sqlite as store_sqlite
from store.audit import Action


@click.group("retention")
def retention() -> None:
    """Retention: remove metadata and archives past their time (dry run by default)."""


def settings(app: App) -> Settings:
    return Settings.from_config(lambda key: app.config[key])


def plan_text(result: Plan, applied: dict[str, Any] | None) -> str:
    lines: list[str] = []
    verb = "removed" if applied else "due"
    for p in result.partitions:
        state = verb if p.due else f"held ({', '.join(p.held_by)})"
        lines.append(f"metadata  {p.stream:<6} {p.date}  {p.files} file(s)  {state}")
    for a in result.archives:
        if a.status == "kept":
            continue
        state = "shredded" if applied and a.ref in applied["archives_shredded"] else a.status
        lines.append(
            f"archive   {a.ref}  ended {a.ended_at:%F}  {len(a.segments)} segment(s)  "
            f"{state}: {safe(a.why)}"
        )
    for ref in result.unknown_archives:
        lines.append(f"archive   {ref}  unknown to the registry: left alone")
    for bad in result.bad_partitions:
        lines.append(f"metadata  {bad}: not a date partition: left alone")
    for error in applied["errors"] if applied else []:
        lines.append(f"error     {error}")
    c = result.counts()
    summary = (
        f"retention {'applied' if applied else 'dry run'}: "
        f"{c['metadata_partitions_due']} metadata partition(s) and {c['archives_due']} "
        f"archive(s) due, {c['archives_held'] + c['metadata_partitions_held']} held, "
        f"{c['archives_retained']} retained by review"
    )
    if not applied and (c["metadata_partitions_due"] or c["archives_due"]):
        summary += " (lbm retention run --apply removes them)"
    return "\n".join([*lines, summary])


@retention.command("run")
@click.option("--apply", "do_apply", is_flag=True, help="remove what is due (else list it)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def run(app: App, do_apply: bool, as_json: bool) -> None:
    """List what retention makes due; with --apply, remove it (audited)."""
    app.require_initialised()
    conn = store_sqlite.connect(app.paths.registry)
    try:
        result, applied = retention_apply.run(
            conn, app.paths, settings(app), app.clock.now(), app.audit, app.actor,
            do_apply=do_apply, trigger="command",
        )  # fmt: skip
    finally:
        conn.close()
    data = {**result.as_dict(), "applied": applied}
    emit(data, as_json, plan_text(result, applied))
    if applied and applied["errors"]:
        sys.exit(EXIT_FAIL)


@retention.command("review")
@click.argument("ref")
@click.option("--decision", type=click.Choice(["retain", "delete"]), required=True)
@click.option("--reason", required=True, help="why (audited)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def review(app: App, ref: str, decision: str, reason: str, as_json: bool) -> None:
    """Record a retention review of REF's archive: retain (until the next review) or delete."""
    if decision == "delete":
        canonical, _ = acting_on(app, ref, "review")
        conn = store_sqlite.connect(app.paths.registry, readonly=True)
        try:
            auth = load_one(conn, canonical)
        finally:
            conn.close()
        if auth is not None and app.clock.now() < auth.ended_at():
            fail(
                f"{canonical} is still in force (until {auth.ended_at():%FT%TZ}): its archive "
                "cannot be deleted while it records; cancel it first (lbm auth cancel)",
                EXIT_FAIL,
            )
    event = record(app, ref, "review", reason, decision)
    app.audit.append(
        Action.RETENTION_REVIEW, app.actor, refs=(event.ref,), ref=event.ref,
        decision=decision, reason=event.reason, investigator=event.investigator,
    )  # fmt: skip
    emit(event.as_dict(), as_json, f"{event.ref}: retention review recorded ({decision})")

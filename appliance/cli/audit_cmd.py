"""`lbm audit show | verify`: read and check the hash-chained, signed audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from appliance.cli.app import App, emit, fail, pass_app
from store import signing
from store.audit import AuditLog, verify_log
from store.clock import parse_utc


@click.group("audit")
def audit() -> None:
    """Show and verify the audit log."""


@audit.command("show")
@click.option("--since", metavar="ISO8601", help="only entries at or after this instant")
@click.option("--ref", metavar="REF", help="only entries concerning this authorisation")
@click.option("--action", metavar="NAME", help="only entries of this action")
@click.option("--json", "as_json", is_flag=True, help="one JSON entry per line")
@pass_app
def show(app: App, since: str | None, ref: str | None, action: str | None, as_json: bool) -> None:
    """Print audit entries (oldest first)."""
    try:
        since_at = parse_utc(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    log = AuditLog(app.paths, None, app.clock)
    for entry in log.entries():
        if since_at is not None and parse_utc(entry["ts"]) < since_at:
            continue
        if ref is not None and ref not in entry.get("refs", []):
            continue
        if action is not None and entry.get("action") != action:
            continue
        if as_json:
            click.echo(json.dumps(entry, sort_keys=True))
        else:
            fields = " ".join(f"{k}={v}" for k, v in sorted(entry.get("fields", {}).items()))
            refs = ",".join(entry.get("refs", [])) or "-"
            click.echo(
                f"{entry['seq']:>6} {entry['ts']} {entry['action']:<20} "
                f"actor={entry['actor']} refs={refs} {fields}".rstrip()
            )


@audit.command("verify")
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a file of witnessed heads (e.g. exported journal lines) to check against",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(app: App, witness: Path | None, as_json: bool) -> None:
    """Check the chain, every signature and the signed head; exit 1 at the first bad entry."""
    keys = signing.load_public_keys(app.paths)
    if not keys:
        fail(f"{app.paths.keys}: no gateway public key to verify with", 2)
    result = verify_log(app.paths, keys, witness)
    data = {"ok": result.ok, "entries": result.entries, "problems": result.problems}
    if result.ok:
        emit(
            data,
            as_json,
            f"audit log ok: {result.entries} entries, chain and signatures verified, head matches",
        )
    else:
        emit(data, as_json, f"audit log FAILED verification: {result.first_problem}")
        sys.exit(1)

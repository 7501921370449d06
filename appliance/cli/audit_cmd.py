"""`lbm audit show | verify | repair-head`: read, check and mend the signed audit log.

`verify` exit status: 0 when the log verifies (warnings and an interrupted append are printed but
do not fail it), 1 for tampering or loss (edits, deletions, truncation, erasure, a signer the
pinned key does not reach, a contradicting witness), 2 for a usage error, 3 with `--strict` when
the log verifies but has warnings (time going backwards, fake-clock entries, an unsigned tail).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.cli.app import App, emit, fail, pass_app
from appliance.cli.textsafe import safe
from store import StoreError, signing
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import parse_utc

EXIT_WARNINGS = 3

NO_PIN = (
    "no --allowed-signers: only the log's internal consistency was checked, not who signed it "
    "(the keys came from the data directory, which anyone who can write it can replace)"
)
NO_WITNESS = (
    "no --witness: a rollback to an older saved log and head, or a forgery by someone holding "
    "the gateway's private key, cannot be detected"
)


@click.group("audit")
def audit() -> None:
    """Show, verify and repair the audit log."""


def _line(entry: dict[str, Any]) -> str:
    fields = " ".join(f"{safe(k)}={safe(v)}" for k, v in sorted(entry.get("fields", {}).items()))
    refs = ",".join(safe(r) for r in entry.get("refs", [])) or "-"
    return (
        f"{entry['seq']:>6} {safe(entry['ts'])} {safe(entry['action']):<20} "
        f"actor={safe(entry['actor'])} refs={refs} {fields}"
    ).rstrip()


@audit.command("show")
@click.option("--since", metavar="ISO8601", help="only entries at or after this instant")
@click.option("--ref", metavar="REF", help="only entries concerning this authorisation")
@click.option("--action", metavar="NAME", help="only entries of this action")
@click.option("--json", "as_json", is_flag=True, help="one JSON entry per line")
@pass_app
def show(app: App, since: str | None, ref: str | None, action: str | None, as_json: bool) -> None:
    """Print audit entries (oldest first); free text is shown escaped."""
    try:
        since_at = parse_utc(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    if action is not None and action not in {a.value for a in Action}:
        fail(f"--action '{safe(action)}': no such action; one of: {', '.join(Action)}", 2)
    log = AuditLog(app.paths, None, app.clock)
    for entry in log.entries():
        if since_at is not None and parse_utc(entry["ts"]) < since_at:
            continue
        if ref is not None and ref not in entry.get("refs", []):
            continue
        if action is not None and entry.get("action") != action:
            continue
        click.echo(json.dumps(entry, sort_keys=True) if as_json else _line(entry))


def load_pin(app: App, allowed_signers: Path) -> dict[str, Ed25519PublicKey]:
    """The gateway keys of an allowed-signers file kept off the box (exit 2 if unreadable)."""
    try:
        text = allowed_signers.read_text()
        # a copy of audit/ without its config: any principal's line counts
        principal = app.config.gateway_id if app.config_path.exists() else None
        return signing.parse_allowed_signers(text, str(allowed_signers), principal)
    except (OSError, UnicodeDecodeError, StoreError) as exc:
        fail(f"--allowed-signers {allowed_signers}: {exc}", 2)


def pinned_chain(app: App, allowed_signers: Path) -> dict[str, Ed25519PublicKey]:
    """The gateway keys the audit log's key chain reaches from the pin: the only keys whose
    signatures count. Exit 1 when the log does not verify from the pin."""
    pinned = load_pin(app, allowed_signers)
    keys = signing.load_public_keys(app.paths)
    result = verify_log(
        app.paths, keys, pinned=pinned, pinned_from=str(allowed_signers), require_init=True
    )
    if not result.ok:
        fail(f"the audit log does not verify from the pinned key: {result.first_problem}")
    known = {**keys, **pinned}
    return {fp: known[fp] for fp in result.signers if fp in known}


@audit.command("verify")
@click.option(
    "--allowed-signers",
    "allowed_signers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the allowed-signers line `lbm status` printed, kept off the box: trust starts there",
)
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a file of witnessed heads (journal lines exported off the box) to check against",
)
@click.option("--strict", is_flag=True, help=f"exit {EXIT_WARNINGS} when there are warnings")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(
    app: App, allowed_signers: Path | None, witness: Path | None, strict: bool, as_json: bool
) -> None:
    """Check the chain, every signature, the signed head, and optionally a pin and a witness."""
    keys = signing.load_public_keys(app.paths)
    pinned = None
    if allowed_signers is not None:
        pinned = load_pin(app, allowed_signers)
    elif not keys:
        fail(f"{app.paths.keys}: no gateway public key to verify with", 2)
    result = verify_log(
        app.paths,
        keys,
        witness,
        pinned=pinned,
        pinned_from=str(allowed_signers),
        require_init=True,
    )
    notes = ([] if pinned else [NO_PIN]) + ([] if witness else [NO_WITNESS])
    data = {
        "ok": result.ok,
        "entries": result.entries,
        "problems": result.problems,
        "warnings": result.warnings,
        "unsigned_after_head": result.unsigned_after_head,
        "fake_clock_entries": len(result.fake_clock_seqs),
        "signing_keys": result.signers,
        "pinned": pinned is not None,
        "witnessed_heads": result.witnessed,
        "notes": notes,
    }
    if result.ok:
        checked = "pinned key chain, " if pinned else ""
        checked += f"{result.witnessed} witnessed heads, " if witness else ""
        head = "head matches" if not result.unsigned_after_head else "head behind (see warning)"
        lines = [
            f"audit log ok: {result.entries} entries, chain and signatures verified, "
            f"{checked}{head}"
        ]
    else:
        lines = [f"audit log FAILED verification: {result.first_problem}"]
        lines += [f"problem: {p}" for p in result.problems[1:]]
    lines += [f"warning: {w}" for w in result.warnings]
    lines += [f"note: {n}" for n in notes]
    emit(data, as_json, "\n".join(lines))
    if not result.ok:
        sys.exit(1)
    if strict and result.warnings:
        sys.exit(EXIT_WARNINGS)


@audit.command("repair-head")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def repair_head(app: App, as_json: bool) -> None:
    """Re-sign a head left behind by an interrupted append (audited as head_repaired).

    Only an intact chain is re-signed: a torn last line or any tampering is refused, because
    re-signing would hide it.
    """
    app.require_initialised()
    result = verify_log(app.paths, signing.load_public_keys(app.paths), require_init=True)
    if not result.ok:
        reason = result.first_problem or ""
        advice = (
            " Keep a copy of audit.jsonl as evidence; the partial line is not an entry (no "
            "signature covers it): remove those bytes by hand, then run repair-head again."
            if "incomplete" in reason
            else ""
        )
        fail(f"not re-signing the head: the log fails verification: {reason}.{advice}")
    if not result.unsigned_after_head:
        emit({"repaired": False, "entries": result.entries}, as_json, "head is current")
        return
    seq = app.audit.repair_head(app.actor)
    emit(
        {"repaired": True, "head_seq": seq, "was": result.head_seq},
        as_json,
        f"head re-signed at seq {seq} (was {result.head_seq}); recorded as head_repaired",
    )

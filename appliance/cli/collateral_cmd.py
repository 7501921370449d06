"""`lbm archive collateral`: remove a collateral record from an archive, by two people.

lbm archive collateral propose REF --record ID --reason TEXT --identity FILE|-
lbm archive collateral approve PROPOSAL --identity FILE|-   (a different investigator)
lbm archive collateral list [REF] [--json]

The logic is in appliance/evidence/collateral.py (checks, proposals) and store/collateral.py
(the segment rewrite); docs/collateral.md describes both.
"""

from __future__ import annotations

import click

from appliance.cli.app import App, emit, fail, pass_app, read_identity
from appliance.evidence import collateral as coll
from store import KeyError_, StoreError

IDENTITY_HELP = "your age identity file ('-' reads stdin); used in memory, never stored"


def _context(app: App) -> coll.Context:
    app.require_initialised()
    return coll.Context(
        app.paths,
        app.gateway_key,
        app.clock,
        app.audit,
        app.actor,
        list(app.config["keys.custodians"]),
    )


@click.group("collateral")
def collateral() -> None:
    """Remove a record of collateral intrusion: one investigator proposes, another approves."""


@collateral.command("propose")
@click.argument("ref")
@click.option("--record", "record_id", required=True, metavar="ID", help="REF/NNNNNN/N")
@click.option("--reason", required=True, metavar="TEXT", help="why the record is collateral")
@click.option("--identity", required=True, metavar="FILE|-", help=IDENTITY_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def propose(app: App, ref: str, record_id: str, reason: str, identity: str, as_json: bool) -> None:
    """Propose removing record ID from REF's archive (your identity must unwrap REF's key)."""
    try:
        coll.check_record_id(ref, record_id)
        reason = coll.check_reason(reason)
    except (ValueError, KeyError_) as exc:
        fail(str(exc), 2)
    ctx = _context(app)
    text = read_identity(identity)
    try:
        proposal = coll.propose(ctx, ref, record_id, reason, text)
    except coll.Refused as exc:
        fail(f"refused ({exc.code}): {exc}")
    except StoreError as exc:
        fail(str(exc))
    emit(
        proposal.as_dict(),
        as_json,
        f"proposal {proposal.id}: remove {record_id} from {ref}; a different investigator "
        f"approves with `lbm archive collateral approve {proposal.id} --identity FILE`",
    )


@collateral.command("approve")
@click.argument("proposal_id", metavar="PROPOSAL", type=click.IntRange(min=1))
@click.option("--identity", required=True, metavar="FILE|-", help=IDENTITY_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def approve(app: App, proposal_id: int, identity: str, as_json: bool) -> None:
    """Approve PROPOSAL (not your own): REF's segment is rewritten without the record, and
    the old segment's wrapped key destroyed."""
    ctx = _context(app)
    text = read_identity(identity)
    try:
        proposal, removal = coll.approve(ctx, proposal_id, text)
    except coll.Refused as exc:
        fail(f"refused ({exc.code}): {exc}")
    except StoreError as exc:
        fail(f"approval of proposal {proposal_id} failed: {exc}")
    del text
    emit(
        {**proposal.as_dict(), **removal.as_audit()},
        as_json,
        f"proposal {proposal.id} approved: {proposal.record_id} removed; segment "
        f"{proposal.old_segment} replaced by {proposal.new_segment} "
        f"({removal.records_kept} record(s) kept), old segment key destroyed",
    )


@collateral.command("list")
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, ref: str | None, as_json: bool) -> None:
    """Proposals (of REF, or of every reference you may act on)."""
    if ref is not None:
        try:
            coll.check_ref(ref)
        except KeyError_ as exc:
            fail(str(exc), 2)
    ctx = _context(app)
    try:
        items = coll.visible(ctx, ref)
    except coll.Refused as exc:
        fail(f"refused ({exc.code}): {exc}")
    lines = [
        f"{p.id:<5} {p.state:<9} {p.record_id:<32} by {p.proposer} at {p.proposed_at}"
        + (f", approved by {p.approver} at {p.approved_at}" if p.approver else "")
        + f"\n      reason: {p.reason}"
        for p in items
    ]
    emit([p.as_dict() for p in items], as_json, "\n".join(lines) or "no proposals")

"""`lbm report --from DATE --to DATE [--json] [--html FILE]`: the scrutiny report (counts only).

The counting is in `appliance/evidence/report.py`, the page in `report_html.py`. The audit chain
is verified first (`store.audit_verify`, against the keys in keys/: pin trust with `lbm audit
verify --allowed-signers`); the report says whether it held. Each report is audited (`report`,
period and format).
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.app import EXIT_USAGE, App, emit, fail, pass_app
from appliance.cli.textsafe import safe
from appliance.evidence import report as report_mod
from appliance.evidence.report_html import render
from store import AuditError, signing
from store import sqlite as store_sqlite
from store.audit import Action
from store.audit_verify import verify_log
from store.fsutil import atomic_write
from store.signing import public_openssh


def _chain(app: App) -> dict[str, object]:
    result = verify_log(app.paths, signing.load_public_keys(app.paths), require_init=True)
    return {"ok": result.ok, "entries": result.entries, "problem": result.first_problem}


@click.command("report")
@click.option("--from", "start", required=True, metavar="DATE", help="start (YYYY-MM-DD or ISO)")
@click.option("--to", "end", required=True, metavar="DATE", help="end, excluded")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="also write one self-contained HTML page with charts",
)
@pass_app
def report(app: App, start: str, end: str, as_json: bool, html_file: Path | None) -> None:
    """Counts for the scrutiny body: authorisations, reviews, searches, exports, purges,
    refusals, gaps and whether the audit chain verified. Never content or results."""
    app.require_initialised()
    try:
        period = report_mod.parse_period(start, end)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if html_file is not None and not html_file.parent.is_dir():
        fail(f"--html {html_file}: directory {html_file.parent} does not exist", EXIT_USAGE)
    pub = public_openssh(app.gateway_key.public)
    gateway = {
        "id": app.config.gateway_id,
        "allowed_signers": f'{app.config.gateway_id} namespaces="lbm-evidence" {pub}',
    }
    chain = _chain(app)
    conn = store_sqlite.connect(app.paths.registry, readonly=True)
    try:
        data = report_mod.build(
            conn, app.paths, app.audit.entries(), period, app.clock.now(),
            int(app.config["retention.review_days"]), chain, gateway,
        )  # fmt: skip
    except AuditError as exc:
        fail(f"audit log unreadable: {exc}")
    finally:
        conn.close()
    formats = ["json" if as_json else "text"]
    if html_file is not None:
        try:
            atomic_write(html_file, render(data).encode(), 0o600)
        except OSError as exc:
            fail(f"--html {html_file}: {exc.strerror or exc}", EXIT_USAGE)
        formats.append("html")
    app.audit.append(Action.REPORT, app.actor, **period.as_dict(), formats=formats)
    emit(data, as_json, report_mod.as_text(data, safe))

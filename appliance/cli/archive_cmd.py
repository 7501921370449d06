"""`lbm archive`: check archives without decrypting, recover cut-off segments, list and export.

lbm archive verify [REF] [--json]       signatures (current and retired gateway keys), the
                                        chain and head, ciphertext and index hashes, and
                                        against the audit log: every sealed segment it
                                        records is present with its wrapped key unless its
                                        destruction is on record; exit 1 naming each problem
lbm archive recover [REF] [--json]      seal segments cut off by a crash as truncated
                                        (audited); refused while a writer holds the archive
lbm archive records REF [--json]        the plaintext index (no content, no key needed);
                                        a segment replaced by a collateral removal is left out
lbm archive export-raw REF --identity FILE|- --out DIR [--segment N]
                                        each record's exact bytes to DIR (archive_export.py)
lbm archive collateral propose|approve|list   remove a collateral record (collateral_cmd.py)
lbm archive upload [--json]             upload sealed segments to `[store] archive_root`
                                        (what the housekeeping daemon does each pass)

With `[store] archive_root = "s3://..."`, verify, records and export-raw read the object
store's copies (store/archive_stage.py) together with what is still local.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from appliance.cli import archive_bundle_cmd, hold_cmd
from appliance.cli.app import App, emit, fail, pass_app
from appliance.cli.archive_export import export_raw
from appliance.cli.audit_cmd import pinned_chain
from appliance.cli.collateral_cmd import collateral
from store import ArchiveError, AuditError, KeyError_, StoreError, signing
from store import sqlite as store_sqlite
from store.archive import Archive
from store.archive_audit import OnRecord, cross_check, on_record
from store.archive_stage import staged_paths
from store.archive_upload import ArchiveUploader, archive_is_remote
from store.keys import check_ref
from store.manifest import VerifyReport, amendments, read_manifests, verify_all
from store.recovery import live_segments
from store.segment import segment_numbers


@click.group("archive")
def archive() -> None:
    """Verify archives, recover cut-off segments, list records, export them."""


archive.add_command(export_raw)
archive.add_command(collateral)
archive.add_command(hold_cmd.hold)
archive.add_command(hold_cmd.release)
archive.add_command(archive_bundle_cmd.bundle)
archive.add_command(archive_bundle_cmd.export)
archive.add_command(archive_bundle_cmd.verify_export_cmd)


def _checked_ref(ref: str | None) -> None:
    if ref is not None:
        try:
            check_ref(ref)
        except KeyError_ as exc:
            fail(str(exc), 2)


def registry_refs(app: App) -> tuple[list[str], str | None]:
    """References of every authorisation in the registry (read-only), or a problem."""
    if not app.paths.registry.exists():
        return [], None
    try:
        conn = store_sqlite.connect(app.paths.registry, readonly=True)
        try:
            rows = conn.execute("SELECT ref FROM authorisations").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return [], None
        return [], f"{app.paths.registry}: cannot read authorisations ({exc})"
    except sqlite3.Error as exc:
        return [], f"{app.paths.registry}: cannot read authorisations ({exc})"
    return [str(r[0]) for r in rows], None


def _audit_record(app: App) -> tuple[OnRecord, str | None]:
    try:
        return on_record(app.audit.entries()), None
    except (AuditError, OSError) as exc:
        return OnRecord(), f"audit log unreadable, archives not cross-checked: {exc}"


@archive.command("verify")
@click.argument("ref", required=False)
@click.option(
    "--allowed-signers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the allowed-signers line `lbm status` printed, kept off the box: trust only the "
    "gateway keys the audit log's key chain reaches from it",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(app: App, ref: str | None, allowed_signers: Path | None, as_json: bool) -> None:
    """Check manifests, chains and ciphertext hashes without decrypting, and that everything
    the audit log records as sealed is still there (all archives, or REF)."""
    app.require_initialised()
    _ = app.config  # loads [store] into app.paths
    _checked_ref(ref)
    if allowed_signers is not None:
        keys = pinned_chain(app, allowed_signers)
    else:
        keys = signing.load_public_keys(app.paths)
    record, audit_problem = _audit_record(app)
    known, registry_problem = registry_refs(app)
    try:
        with staged_paths(app.paths, None if ref is None else [ref]) as paths:
            report = _verify_staged(paths, keys, ref, record, known)
    except ArchiveError as exc:
        fail(str(exc))
    for problem in (audit_problem, registry_problem):
        if problem:
            report.bad(problem)
    lines = [
        f"archive {'ok' if report.ok else 'FAILED'}: {report.archives} archive(s), "
        f"{report.segments} sealed segment(s), {len(report.open_segments)} open, "
        f"{len(report.truncated)} truncated; audit log records {report.on_record} sealed"
    ]
    lines += [f"truncated: {s}" for s in report.truncated]
    lines += [f"amended: {s}" for s in report.amended]
    lines += [f"problem: {p}" for p in report.problems]
    if allowed_signers is None:
        lines.append(
            "note: signatures were checked against every gateway key in keys/, so this shows "
            "internal consistency only; pin trust with --allowed-signers FILE (the line `lbm "
            "status` prints, kept off the box)"
        )
    emit(report.__dict__, as_json, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


def _verify_staged(
    paths: Any, keys: Any, ref: str | None, record: OnRecord, known: list[str]
) -> VerifyReport:
    if ref is not None and not (paths.archive / ref).is_dir() and ref in record.refs | {*known}:
        report = VerifyReport()  # known, nothing archived yet (or deleted: cross_check says)
    else:
        report = verify_all(paths.archive, keys, ref)
    cross_check(paths, record, report, ref, known)
    return report


@archive.command("upload")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def upload(app: App, as_json: bool) -> None:
    """Upload every sealed segment to `[store] archive_root`, verify each object by reading it
    back, then remove the local copy (exit 1 if any is left for a later pass)."""
    app.require_initialised()
    _ = app.config  # loads [store] into app.paths
    if not archive_is_remote(app.paths):
        fail("[store] archive_root is the local archive/: there is nothing to upload to", 2)
    result = ArchiveUploader(app.paths, audit=app.audit, actor=app.actor).run()
    counts = result.counts()
    text = (
        f"uploaded {counts['uploaded']} segment(s); {counts['failed']} failed "
        f"({counts['conflicts']} conflict(s)); {counts['pending']} awaiting upload"
    )
    if result.error:
        text += f"\nproblem: {result.error}"
    emit({**counts, "error": result.error}, as_json, text)
    if result.failed or result.error:
        sys.exit(1)


@archive.command("recover")
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def recover(app: App, ref: str | None, as_json: bool) -> None:
    """Seal segments cut off by a crash as truncated (all archives, or REF); audited.

    Refused while a running writer (a capture daemon, a replay) holds a segment of the archive:
    stop it first, or let it recover on its next start. Segments the audit log records as
    sealed whose manifest has since been deleted are left alone and reported: recovery never
    re-seals what someone removed. Running it again changes nothing."""
    app.require_initialised()
    _checked_ref(ref)
    root = app.paths.archive
    if ref is not None:
        if not (root / ref).is_dir():
            fail(f"{ref}: no archive for this reference")
        directories = [root / ref]
    else:
        directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    live = [f"{d.name}/{n:06d}" for d in directories for n in live_segments(d)]
    if live:
        fail(
            f"archive being written: segment {', '.join(live)} is held by a running writer "
            "(stop the capture daemon or replay first; a daemon recovers on start)"
        )
    record, audit_problem = _audit_record(app)
    if audit_problem:
        fail(audit_problem)
    sealed_ids = {f"{r}/{n:06d}" for r, n in record.seals}
    deleted = [
        f"{d.name}/{n:06d}"
        for d in directories
        for n in segment_numbers(d)
        if f"{d.name}/{n:06d}" in sealed_ids and not (d / f"{n:06d}.manifest.json").exists()
    ]
    archive_ = Archive(app.paths, app.gateway_key, app.clock, audit=app.audit, actor=app.actor)
    try:
        done = archive_.recover(ref, trigger="command", exclude=sealed_ids)
    except StoreError as exc:
        fail(f"recovery failed: {exc}")
    lines = [f"sealed as truncated: {s}" for s in done] or ["nothing to recover"]
    lines += [
        f"left alone: {s}: sealed on record but its manifest is missing (run `lbm archive verify`)"
        for s in deleted
    ]
    emit({"sealed": done, "left_alone": deleted}, as_json, "\n".join(lines))
    if deleted:
        sys.exit(1)


def _index(app: App, ref: str) -> list[dict[str, Any]]:
    try:
        check_ref(ref)
        with staged_paths(app.paths, [ref]) as paths:
            return _index_in(paths.archive / ref, ref)
    except (ArchiveError, KeyError_) as exc:
        fail(str(exc))


def _index_in(directory: Path, ref: str) -> list[dict[str, Any]]:
    if not directory.is_dir():
        fail(f"{ref}: no archive for this reference")
    items: list[dict[str, Any]] = []
    replaced = amendments(read_manifests(directory))  # collateral removals: the replacement lists
    for number in segment_numbers(directory):
        path = directory / f"{number:06d}.index.jsonl"
        if number in replaced or not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                break  # a torn last line of a segment cut off by a crash
    return items


@archive.command("records")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def records(app: App, ref: str, as_json: bool) -> None:
    """List REF's records from the plaintext index (ids, channels, times; no content)."""
    app.require_initialised()
    _ = app.config  # loads [store] into app.paths
    items = _index(app, ref)
    if as_json:
        emit(items, True)
        return
    for i in items:
        click.echo(
            f"{i['id']:<28} {i['ts']:<28} {i['channel']:<8} {i['kind']:<12} "
            f"{i.get('principal') or '-':<12} {i['length']} bytes"
        )

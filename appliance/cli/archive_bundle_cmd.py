"""`lbm archive bundle|export|verify-export`: evidence leaving the gateway (appliance/evidence/).

lbm archive bundle REF --out DIR [--from T] [--to T] [--channel C]... [--record ID]...
        ciphertext only, signed by the gateway key (BUNDLE.json, BUNDLE.json.sig); opened on the
        investigator's machine with `lbm evidence open`
lbm archive export REF --identity FILE|- --out DIR [same selection]
        bundle and open on the gateway, only while [evidence] allow_gateway_decrypt is true;
        MANIFEST.json is signed with the gateway key
lbm archive verify-export DIR --allowed-signers FILE
        a bundle or an opened bundle, offline: names every changed, missing or extra file

The acting login user must map to an investigator assigned to REF or a custodian (never REF's
subject). Refusals are audited as export_refused; a bundle as `bundle` (its BUNDLE.json hash);
a gateway-side export as `export` with gateway_decrypt true.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.cli.app import App, emit, fail, pass_app, read_identity
from appliance.evidence import bundle as bundles
from appliance.evidence.access import AccessRefused
from appliance.evidence.bundle_common import EvidenceError, make_dirs
from appliance.evidence.opening import OpenRequest, open_bundle
from appliance.evidence.verify_export import verify_export
from store import KeyError_, StoreError
from store.audit import Action
from store.clock import parse_utc
from store.keys import check_ref


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_utc(value)
    except ValueError as exc:
        fail(f"{option} {value!r}: {exc}", 2)


def _selection(
    ref: str,
    start: str | None,
    end: str | None,
    channels: tuple[str, ...],
    records: tuple[str, ...],
) -> bundles.Selection:
    try:
        check_ref(ref)
        ids = bundles.parse_record_ids(ref, records)
    except (KeyError_, ValueError) as exc:
        fail(str(exc), 2)
    return bundles.Selection(_time(start, "--from"), _time(end, "--to"), channels, ids)


def _side(app: App) -> bundles.GatewaySide:
    return bundles.GatewaySide(
        paths=app.paths,
        gateway_id=str(app.config["gateway.id"]),
        gateway_key=app.gateway_key,
        custodians=tuple(app.config["keys.custodians"]),
        notice_version=str(app.config["notice.version"]),
        login=app.actor,
        now=app.clock.now(),
    )


def _refuse(app: App, ref: str, why: str, **fields: Any) -> NoReturn:
    app.audit.append(Action.EXPORT_REFUSED, app.actor, refs=(ref,), why=why, **fields)
    fail(why)


selection_options = [
    click.option("--from", "start", metavar="ISO8601", help="records from this instant"),
    click.option("--to", "end", metavar="ISO8601", help="records before this instant"),
    click.option(
        "--channel",
        "channels",
        multiple=True,
        type=click.Choice(["web", "email", "packets"]),
        help="only records of this channel (repeatable)",
    ),
    click.option("--record", "records", multiple=True, metavar="ID", help="REF/NNNNNN/N"),
]


def with_selection(fn: Any) -> Any:
    for option in reversed(selection_options):
        fn = option(fn)
    return fn


def _authorised(app: App, ref: str, command: str) -> tuple[bundles.GatewaySide, Any, Any]:
    side = _side(app)
    try:
        acting, auth = bundles.authorise(side, ref)
    except AccessRefused as exc:
        _refuse(app, ref, str(exc), command=command, login=app.actor)
    return side, acting, auth


@click.command("bundle")
@click.argument("ref")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new directory")
@with_selection
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bundle(
    app: App,
    ref: str,
    out: Path,
    start: str | None,
    end: str | None,
    channels: tuple[str, ...],
    records: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write REF's sealed segments, wrapped keys and chain to OUT as a gateway-signed bundle."""
    app.require_initialised()
    selection = _selection(ref, start, end, channels, records)
    side, acting, auth = _authorised(app, ref, "bundle")
    try:
        result = bundles.make_bundle(side, ref, out, acting, auth, selection)
    except (EvidenceError, StoreError) as exc:
        _refuse(app, ref, str(exc), command="bundle", **acting.as_audit())
    app.audit.append(
        Action.BUNDLE,
        app.actor,
        refs=(ref,),
        sha256=result.sha256,
        out=str(result.out),
        segments=result.segments,
        records=result.records,
        selection=selection.as_dict(),
        **acting.as_audit(),
    )
    lines = [f"bundle {result.out}: {len(result.segments)} segment(s), {result.records} record(s)"]
    lines += [f"skipped: {s}" for s in result.skipped]
    lines.append(f"BUNDLE.json sha256 {result.sha256}")
    data = {**result.__dict__, "out": str(result.out)}
    emit(data, as_json, "\n".join(lines))


@click.command("export")
@click.argument("ref")
@click.option("--identity", required=True, metavar="FILE|-", help="age identity; never stored")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new directory")
@with_selection
@click.option("--json", "as_json", is_flag=True)
@pass_app
def export(
    app: App,
    ref: str,
    identity: str,
    out: Path,
    start: str | None,
    end: str | None,
    channels: tuple[str, ...],
    records: tuple[str, ...],
    as_json: bool,
) -> None:
    """Bundle and open REF on the gateway (only with [evidence] allow_gateway_decrypt)."""
    app.require_initialised()
    selection = _selection(ref, start, end, channels, records)
    if not app.config["evidence.allow_gateway_decrypt"]:
        _refuse(
            app,
            ref,
            "decrypting on the gateway is switched off ([evidence] allow_gateway_decrypt = "
            "false): make a bundle with `lbm archive bundle` and open it with `lbm evidence open` "
            "on the investigator's machine",
            command="export",
            login=app.actor,
        )
    side, acting, auth = _authorised(app, ref, "export")
    text = read_identity(identity)
    parent = out.absolute().parent
    try:
        make_dirs(parent)
        tmp = Path(tempfile.mkdtemp(prefix=".lbm-export-", dir=parent))  # OUT's file system
    except OSError as exc:
        fail(f"--out {out}: cannot create a working directory beside it ({exc.strerror})")
    try:
        made = bundles.make_bundle(
            side, ref, tmp / "bundle", acting, auth, selection, mode=bundles.MODE_EXPORT
        )
        signers = tmp / "gateway.allowed_signers"
        signers.write_text(bundles.gateway_info(side)["allowed_signers"] + "\n")
        request = OpenRequest(
            made.out, out, text, signers, app.gateway_key.private, app.actor, side.now,
            data_root=app.paths.root,
        )  # fmt: skip
        result = open_bundle(request)
    except (EvidenceError, StoreError) as exc:
        app.audit.append(
            Action.EXPORT, app.actor, refs=(ref,), gateway_decrypt=True, ok=False,
            error=str(exc), **acting.as_audit(),
        )  # fmt: skip
        fail(f"{exc} (nothing was exported)")
    finally:
        del text
        shutil.rmtree(tmp, ignore_errors=True)
    app.audit.append(
        Action.EXPORT,
        app.actor,
        refs=(ref,),
        gateway_decrypt=True,
        ok=True,
        format="bundle",
        out=str(result.out),
        bundle_sha256=made.sha256,
        manifest_sha256=result.manifest_sha256,
        segments=made.segments,
        records=result.records,
        missing=len(result.missing),
        **acting.as_audit(),
    )
    report(result, as_json)


def report(result: Any, as_json: bool) -> None:
    lines = [f"opened into {result.out}: {result.records} record(s), {result.files} file(s)"]
    lines += [f"missing (truncated segment): {r}" for r in result.missing]
    lines += [f"incomplete (cut off): {r}" for r in result.incomplete]
    lines.append(f"MANIFEST.json sha256 {result.manifest_sha256}")
    emit({**result.__dict__, "out": str(result.out)}, as_json, "\n".join(lines))


@click.command("verify-export")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--allowed-signers",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the gateway's allowed-signers line (`lbm status`), kept apart from the bundle",
)
@click.option("--json", "as_json", is_flag=True)
def verify_export_cmd(directory: Path, allowed_signers: Path, as_json: bool) -> None:
    """Check a bundle or an opened bundle offline; names every changed, missing or extra file."""
    result = verify_export(directory, allowed_signers)
    head = f"{result.kind} {directory}: {'ok' if result.ok else 'FAILED'}"
    lines = [f"{head} ({result.files} file(s) listed)"] + [f"problem: {p}" for p in result.problems]
    emit({**result.__dict__, "ok": result.ok}, as_json, "\n".join(lines))
    if not result.ok:
        sys.exit(1)

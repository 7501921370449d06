"""`lbm archive`: check archives without decrypting, list records, export raw records.

    lbm archive verify [REF] [--json]       signatures (current and retired gateway keys), the
                                            chain and head, ciphertext and index hashes;
                                            exit 1 naming each bad segment
    lbm archive records REF [--json]        the plaintext index (no content, no key needed)
    lbm archive export-raw REF --identity FILE|- --out DIR [--segment N]
                                            each record's exact bytes to DIR (audited)

The investigator identity is read from a file or stdin and never stored; plaintext goes only
to the output directory, which may not lie inside the data directory. Format-specific exports
(HAR, .eml, pcapng) build on `store.framing.open_segment`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import App, emit, fail, pass_app
from store import ArchiveError, KeyError_, signing
from store.audit import Action
from store.framing import PlainStream, iter_events, open_segment
from store.fsutil import ensure_dir
from store.keys import KeyStore, check_ref
from store.manifest import verify_all
from store.segment import segment_numbers


@click.group("archive")
def archive() -> None:
    """Verify archives, list records, export them."""


@archive.command("verify")
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(app: App, ref: str | None, as_json: bool) -> None:
    """Check manifests, chains and ciphertext hashes without decrypting (all archives, or REF)."""
    app.require_initialised()
    if ref is not None:
        try:
            check_ref(ref)
        except KeyError_ as exc:
            fail(str(exc), 2)
    report = verify_all(app.paths.archive, signing.load_public_keys(app.paths), ref)
    data = report.__dict__
    lines = [
        f"archive {'ok' if report.ok else 'FAILED'}: {report.archives} archive(s), "
        f"{report.segments} sealed segment(s), {len(report.open_segments)} open, "
        f"{len(report.truncated)} truncated"
    ]
    lines += [f"truncated: {s}" for s in report.truncated]
    lines += [f"problem: {p}" for p in report.problems]
    emit(data, as_json, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


def _index(app: App, ref: str) -> list[dict[str, Any]]:
    directory = app.paths.archive / check_ref(ref)
    if not directory.is_dir():
        fail(f"{ref}: no archive for this reference")
    items: list[dict[str, Any]] = []
    for number in segment_numbers(directory):
        path = directory / f"{number:06d}.index.jsonl"
        if not path.exists():
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
    items = _index(app, ref)
    if as_json:
        emit(items, True)
        return
    for i in items:
        click.echo(
            f"{i['id']:<28} {i['ts']:<28} {i['channel']:<8} {i['kind']:<12} "
            f"{i.get('principal') or '-':<12} {i['length']} bytes"
        )


def _read_identity(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as exc:
        fail(f"--identity {source}: {exc.strerror}", 2)


def _export_segment(app: App, ref: str, number: int, identity: str, out: Path) -> dict[str, Any]:
    reader, fh = open_segment(app.paths, ref, number, identity)
    count = 0
    seg_dir = out / ref / f"{number:06d}"
    ensure_dir(seg_dir)
    current = None
    meta: list[dict[str, Any]] = []
    try:
        for kind, value in iter_events(PlainStream(reader.chunks())):
            if kind == "header":
                n = int(str(value["id"]).rsplit("/", 1)[1])
                current = (seg_dir / f"{n}.bin").open("wb")
                meta.append({**value, "file": f"{n}.bin", "complete": False})
            elif kind == "data" and current is not None:
                current.write(value)
            elif current is not None:
                current.close()
                current = None
                meta[-1]["complete"] = kind == "end" and not (value or {}).get("aborted")
                count += 1
    finally:
        fh.close()
        if current is not None:
            current.close()
    (seg_dir / "records.jsonl").write_text(
        "".join(json.dumps(m, sort_keys=True) + "\n" for m in meta)
    )
    return {"segment": f"{ref}/{number:06d}", "records": count, "truncated": reader.truncated}


@archive.command("export-raw")
@click.argument("ref")
@click.option(
    "--identity",
    required=True,
    metavar="FILE|-",
    help="investigator age identity file ('-' reads stdin); never stored",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="output directory (outside the data directory)",
)
@click.option("--segment", type=int, help="only this segment number")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def export_raw(
    app: App, ref: str, identity: str, out: Path, segment: int | None, as_json: bool
) -> None:
    """Decrypt REF's records to OUT/REF/NNNNNN/N.bin with a records.jsonl per segment."""
    app.require_initialised()
    directory = app.paths.archive / check_ref(ref)
    out = out.absolute()
    real_out, real_root = os.path.realpath(out), os.path.realpath(app.paths.root)
    if real_out == real_root or real_out.startswith(real_root + os.sep):
        fail(f"--out {out}: inside the data directory; plaintext never goes there", 2)
    numbers = segment_numbers(directory)
    if segment is not None:
        if segment not in numbers:
            fail(f"{ref}: no segment {segment}")
        numbers = [segment]
    if not numbers:
        fail(f"{ref}: no archived segments")
    text = _read_identity(identity)
    results = []
    try:
        for number in numbers:
            if not KeyStore(app.paths).segment_key_path(ref, number).exists():
                results.append(
                    {
                        "segment": f"{ref}/{number:06d}",
                        "records": 0,
                        "truncated": False,
                        "destroyed": True,
                    }
                )
                continue
            results.append(_export_segment(app, ref, number, text, out))
    except (ArchiveError, KeyError_) as exc:
        app.audit.append(
            Action.EXPORT,
            app.actor,
            refs=(ref,),
            format="raw",
            ok=False,
            error=str(exc),
            segments=[r["segment"] for r in results],
        )
        fail(str(exc))
    del text
    app.audit.append(
        Action.EXPORT,
        app.actor,
        refs=(ref,),
        format="raw",
        ok=True,
        out=str(out),
        segments=[r["segment"] for r in results],
        records=sum(r["records"] for r in results),
    )
    emit(
        results,
        as_json,
        "\n".join(
            f"{r['segment']}: "
            + (
                "key destroyed (shredded)"
                if r.get("destroyed")
                else f"{r['records']} record(s)" + (" (TRUNCATED)" if r["truncated"] else "")
            )
            for r in results
        ),
    )

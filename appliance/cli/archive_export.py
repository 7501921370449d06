"""`lbm archive export-raw`: each record's exact bytes, decrypted, to an output directory.

    lbm archive export-raw REF --identity FILE|- --out DIR [--segment N]

writes OUT/REF/NNNNNN/N.EXT per record, named by kind (`.pcapng` for packets, `.eml` for mail,
`.http` for web messages, `.bin` otherwise; `record_suffix`), and OUT/REF/NNNNNN/records.jsonl
(each record's header, file and whether it is complete). The identity is read from a file or
stdin and never stored; plaintext goes only to OUT, which may not lie inside the data directory.

Nothing half-written is ever left under a final name: everything is written (files 0600,
directories 0700, whatever the umask) into a hidden staging directory OUT/.REF.XXXX.partial,
fsynced, and each segment directory is renamed into OUT/REF/ only once every segment has been
exported. A failure (wrong identity, altered ciphertext, disk full) removes the staging
directory, is audited as a failed export and exits 1. An earlier export is never overwritten:
if OUT/REF/NNNNNN exists for a requested segment, the command refuses before decrypting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import App, emit, fail, pass_app, read_identity
from store import ArchiveError, KeyError_
from store import agefile as age
from store.archive_stage import staged_paths
from store.audit import Action
from store.framing import PlainStream, iter_events, open_segment
from store.fsutil import ensure_dir, fsync_dir
from store.keys import KeyStore, check_ref
from store.paths import DataPaths
from store.segment import segment_numbers
from store.segment_io import io_message

# A record's file suffix by kind first, then by channel (docs/archive-format.md).
KIND_SUFFIX = {"pcapng": ".pcapng", "message": ".eml", "request": ".http", "response": ".http"}
CHANNEL_SUFFIX = {"email": ".eml", "web": ".http"}


def record_suffix(channel: str, kind: str) -> str:
    return KIND_SUFFIX.get(kind) or CHANNEL_SUFFIX.get(channel) or ".bin"


class ExportError(Exception):
    """Writing the export failed (the message names the cause, never content)."""


def _read_identity(source: str) -> str:
    return read_identity(source)


def _create(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _export_segment(
    paths: DataPaths, ref: str, number: int, identity: str, seg_dir: Path
) -> dict[str, Any]:
    """Decrypt one segment into `seg_dir` (inside the staging directory)."""
    reader, fh = open_segment(paths, ref, number, identity)
    os.mkdir(seg_dir, 0o700)
    os.chmod(seg_dir, 0o700)
    count = 0
    current = -1
    meta: list[dict[str, Any]] = []
    try:
        for kind, value in iter_events(PlainStream(reader.chunks())):
            if kind == "header":
                n = int(str(value["id"]).rsplit("/", 1)[1])
                name = f"{n}{record_suffix(str(value.get('channel')), str(value.get('kind')))}"
                current = _create(seg_dir / name)
                meta.append({**value, "file": name, "complete": False})
            elif kind == "data" and current >= 0:
                _write_all(current, value)
            elif current >= 0:
                fd, current = current, -1
                _finish(fd)
                meta[-1]["complete"] = kind == "end" and not (value or {}).get("aborted")
                count += 1
    except age.AgeError as exc:
        raise ArchiveError(f"segment {ref}/{number:06d}: {exc}") from None
    finally:
        fh.close()
        if current >= 0:
            os.close(current)
    fd = _create(seg_dir / "records.jsonl")
    _write_all(fd, "".join(json.dumps(m, sort_keys=True) + "\n" for m in meta).encode())
    _finish(fd)
    fsync_dir(seg_dir)
    return {"segment": f"{ref}/{number:06d}", "records": count, "truncated": reader.truncated}


def _publish(staging: Path, target: Path, names: list[str]) -> None:
    """Rename each staged segment directory into `target`; all or none."""
    ensure_dir(target)
    moved: list[str] = []
    try:
        for name in names:
            if (target / name).exists():
                raise FileExistsError(f"{target / name} appeared during the export")
            os.rename(staging / name, target / name)
            moved.append(name)
        fsync_dir(target)
    except OSError:
        for name in moved:
            with contextlib.suppress(OSError):
                os.rename(target / name, staging / name)
        raise


@click.command("export-raw")
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
    """Decrypt REF's records to OUT/REF/NNNNNN/N.EXT with a records.jsonl per segment."""
    app.require_initialised()
    _ = app.config  # loads [store] into app.paths
    try:
        check_ref(ref)
    except KeyError_ as exc:
        fail(str(exc), 2)
    out = out.absolute()
    real_out, real_root = os.path.realpath(out), os.path.realpath(app.paths.root)
    if real_out == real_root or real_out.startswith(real_root + os.sep):
        fail(f"--out {out}: inside the data directory; plaintext never goes there", 2)
    text = _read_identity(identity)  # arguments first: a FIFO or device is refused at once
    try:  # an object-store archive: its ciphertext in a private working directory (0700)
        with staged_paths(app.paths, [ref]) as paths:
            _export(app, paths, ref, text, out, segment, as_json)
    except ArchiveError as exc:
        fail(f"{exc} (nothing was exported)")


def _export(
    app: App,
    paths: DataPaths,
    ref: str,
    text: str,
    out: Path,
    segment: int | None,
    as_json: bool,
) -> None:
    numbers = segment_numbers(paths.archive / ref)
    if segment is not None:
        if segment not in numbers:
            fail(f"{ref}: no segment {segment}")
        numbers = [segment]
    if not numbers:
        fail(f"{ref}: no archived segments")
    earlier = [f"{ref}/{n:06d}" for n in numbers if (out / ref / f"{n:06d}").exists()]
    if earlier:
        fail(
            f"--out {out}: {', '.join(earlier)} exported there already; an export never "
            "overwrites (choose another --out, or move the earlier export away)"
        )
    results: list[dict[str, Any]] = []
    staging: Path | None = None
    try:
        try:
            ensure_dir(out)
            staging = Path(tempfile.mkdtemp(prefix=f".{ref}.", suffix=".partial", dir=out))
            for number in numbers:
                if not KeyStore(paths).segment_key_exists(ref, number):
                    results.append({"segment": f"{ref}/{number:06d}", "records": 0,
                                    "truncated": False, "destroyed": True})  # fmt: skip
                    continue
                seg_dir = staging / f"{number:06d}"
                results.append(_export_segment(paths, ref, number, text, seg_dir))
            del text
            written = [r["segment"].rsplit("/", 1)[1] for r in results if not r.get("destroyed")]
            _publish(staging, out / ref, written)
        except OSError as exc:
            raise ExportError(f"cannot write the export to {out}: {io_message(exc)}") from None
    except (ArchiveError, KeyError_, ExportError) as exc:
        app.audit.append(
            Action.EXPORT,
            app.actor,
            refs=(ref,),
            format="raw",
            ok=False,
            error=str(exc),
            segments=[r["segment"] for r in results],
        )
        fail(f"{exc} (nothing was exported)")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
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

"""`lbm evidence open` (investigator's machine): check a bundle, decrypt it in memory, write the
plaintext exports and a signed MANIFEST.json.

1. BUNDLE.json.sig is checked against the allowed-signers file the investigator gives (the line
   `lbm status` publishes), never a key from the bundle; then every listed file's SHA-256 and
   size, no extra file, and the archive's manifest chain (verify_export.py).
2. The identity (a file or stdin, read by the caller) stays in memory: the authorisation key,
   then each segment key, is unwrapped with `store.framing.open_segment` on the bundle, which
   has the data directory's layout.
3. Records stream into the export formats (`formats.ExportSet`: mitmproxy flows and HAR, .eml
   and mbox, pcapng); records the segment's index lists but the (truncated) ciphertext does not
   hold are listed as missing, records cut off as incomplete.
4. MANIFEST.json lists every plaintext file (SHA-256, size, record ids), the source segments,
   BUNDLE.json's hash, the authorisation, notice version(s), gateway, software, time and who
   opened it; MANIFEST.json.sig is an SSHSIG (namespace `lbm-evidence`) by the investigator's
   key registered in BUNDLE.json (the gateway key for `lbm archive export`), and
   MANIFEST.allowed_signers is the line `ssh-keygen -Y verify` needs to check it.

Everything is written into a hidden staging directory and renamed to OUT (which must not exist)
at the end; a failure leaves nothing. Plaintext files are 0600, directories 0700.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.evidence import bundle_common as common
from appliance.evidence.bundle import read_index
from appliance.evidence.formats import ExportSet, FormatError
from appliance.evidence.opening_io import ChunkStream, HashingFile, ProgressBar
from appliance.evidence.verify_export import chain_problems, signer_line
from store import StoreError, agefile, signing, sshsig
from store.clock import format_utc
from store.framing import iter_events
from store.fsutil import fsync_dir
from store.keys import KeyStore
from store.paths import DataPaths

OWN_FILES = {common.BUNDLE, common.BUNDLE_SIG}


@dataclass
class OpenRequest:
    bundle: Path
    out: Path
    identity: str
    allowed_signers: Path
    sign_key: Ed25519PrivateKey
    opened_by: str
    now: datetime
    progress: bool = True
    data_root: Path | None = None  # refuse OUT inside it (on a gateway)


@dataclass
class OpenResult:
    out: Path
    files: int
    records: int
    missing: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    manifest_sha256: str = ""


def check_bundle(root: Path, allowed_signers: Path) -> tuple[dict[str, Any], str]:
    """The verified BUNDLE.json and its hash, or EvidenceError naming every problem."""
    if not root.is_dir():
        raise common.EvidenceError(f"{root}: not a bundle directory")
    bundle, digest = common.verify_bundle(root, allowed_signers)
    files = common.listed_files(bundle, common.BUNDLE)
    problems = common.check_files(root, files, OWN_FILES, deferred=_segment_files(bundle))
    if not problems:
        problems = chain_problems(root, bundle)
    if problems:
        raise common.EvidenceError(
            f"{root}: bundle refused, nothing decrypted: " + "; ".join(problems)
        )
    return bundle, digest


def _seg_path(ref: str, seg: dict[str, Any]) -> str:
    return f"archive/{ref}/{int(seg['number']):06d}.age"


def _segment_files(bundle: dict[str, Any]) -> set[str]:
    """Segment files: hashed while they are decrypted (one read), not before."""
    ref = str(bundle.get("ref"))
    return {_seg_path(ref, s) for s in bundle.get("segments") or []}


def _check_sign_key(bundle: dict[str, Any], key: Ed25519PrivateKey) -> tuple[str, str, str]:
    """(kind, principal, key line) of the MANIFEST signer, which must be the registered key."""
    line = signing.public_openssh(key.public_key())
    if bundle.get("mode") == "gateway-export":
        kind, principal = "gateway", str(bundle["gateway"]["id"])
        expected = str(bundle["gateway"]["public_key"])
    else:
        inv = bundle.get("investigator") or {}
        kind, principal, expected = "investigator", str(inv.get("name")), str(inv.get("ssh_key"))
    if line.split()[:2] != expected.split()[:2]:
        raise common.EvidenceError(
            f"--sign-key: {sshsig.fingerprint(line)} is not the signing key {common.BUNDLE} "
            f"registers for {kind} {principal}; MANIFEST.json signed with it could not be checked"
        )
    return kind, principal, " ".join(expected.split()[:2])


@dataclass
class _SegmentOutcome:
    segment: str
    truncated: bool
    records: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    notice_versions: set[str] = field(default_factory=set)


def _changed(root: Path, rel: str) -> common.EvidenceError:
    return common.EvidenceError(
        f"{root}: bundle refused: changed file: {rel} (SHA-256 differs from the list; "
        "nothing decrypted is kept)"
    )


def _open_segment(
    root: Path,
    seg: dict[str, Any],
    ref: str,
    identity: str,
    sink: ExportSet,
    bar: ProgressBar,
    expected: str,
) -> _SegmentOutcome:
    number = int(seg["number"])
    prefix = f"{ref}/{number:06d}/"
    selected = set(seg["selected"]) if seg.get("selected") is not None else None
    outcome = _SegmentOutcome(f"{ref}/{number:06d}", bool(seg.get("truncated")))
    rel = f"archive/{ref}/{number:06d}.age"
    keystore = KeyStore(DataPaths(root))
    try:
        key = keystore.unwrap_segment(ref, number, keystore.unwrap_authorisation(ref, identity))
        fh = HashingFile((root / rel).open("rb"))
    except (StoreError, OSError) as exc:
        raise common.EvidenceError(f"segment {outcome.segment}: {exc}") from None
    try:
        reader = agefile.AgeReader(fh, [key], allow_truncated=True)  # type: ignore[arg-type]
    except agefile.AgeError as exc:
        fh.close()
        raise common.EvidenceError(f"segment {outcome.segment}: {exc}") from None
    feeding = False
    current = ""
    try:
        for kind, value in iter_events(ChunkStream(reader.chunks())):  # type: ignore[arg-type]
            if kind == "header":
                current = str(value["id"])
                if not current.startswith(prefix):
                    raise common.EvidenceError(f"segment {outcome.segment}: holds {current}")
                feeding = selected is None or current in selected
                if feeding:
                    sink.begin(value)
                    outcome.records.append(current)
                    if isinstance(value.get("notice_version"), str):
                        outcome.notice_versions.add(value["notice_version"])
            elif kind == "data":
                bar.advance(len(value))
                if feeding:
                    sink.data(value)
            elif feeding:
                complete = kind == "end" and not (value or {}).get("aborted")
                sink.end(complete)
                if not complete:
                    outcome.incomplete.append(current)
                feeding = False
        digest = fh.finish()
    except (agefile.AgeError, StoreError) as exc:
        if fh.finish() != expected:  # say which file was altered, not just where age failed
            raise _changed(root, rel) from None
        raise common.EvidenceError(f"segment {outcome.segment}: {exc}") from None
    finally:
        fh.close()
    if digest != expected:  # nothing decrypted from it is kept: the whole open fails
        raise _changed(root, rel)
    outcome.truncated = outcome.truncated or reader.truncated
    index = read_index(root / "archive" / ref / f"{number:06d}.index.jsonl")
    seen = set(outcome.records)
    for entry in index:
        rid = str(entry.get("id"))
        if (selected is None or rid in selected) and rid not in seen:
            outcome.missing.append(rid)
    return outcome


def _manifest(
    req: OpenRequest,
    bundle: dict[str, Any],
    bundle_sha: str,
    signer: tuple[str, str, str],
    outcomes: list[_SegmentOutcome],
    written: list[Any],
) -> dict[str, Any]:
    kind, principal, key = signer
    notices = sorted(set().union(*(o.notice_versions for o in outcomes)))
    notice = bundle.get("notice") or {}
    return {
        "format": common.MANIFEST_FORMAT,
        "mode": bundle.get("mode"),
        "ref": bundle.get("ref"),
        "bundle": {
            "sha256": bundle_sha,
            "made_at": bundle.get("made_at"),
            "made_by": bundle.get("made_by"),
            "selection": bundle.get("selection"),
        },
        "authorisation": bundle.get("authorisation"),
        "notice_versions": notices or [notice.get("version")],
        "notice_source": "records" if notices else notice.get("source"),
        "gateway": {k: bundle["gateway"].get(k) for k in ("id", "public_key", "fingerprint")},
        "software": {"name": common.SOFTWARE, "version": common.software_version()},
        "opened_at": format_utc(req.now),
        "opened_by": req.opened_by,
        "signer": {
            "kind": kind,
            "principal": principal,
            "public_key": key,
            "fingerprint": sshsig.fingerprint(key),
        },
        "segments": [o.__dict__ | {"notice_versions": sorted(o.notice_versions)} for o in outcomes],
        "missing_records": [r for o in outcomes for r in o.missing],
        "incomplete_records": [r for o in outcomes for r in o.incomplete],
        "files": sorted(
            (
                {"path": f.path, "sha256": f.sha256, "size": f.size, "record_ids": f.record_ids}
                for f in written
            ),
            key=lambda f: str(f["path"]),
        ),
    }


def _sync_tree(root: Path) -> None:
    """fsync every file and directory written (once, at the end: writeback overlaps the
    decryption instead of stalling it record by record)."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(Path(dirpath, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def open_bundle(req: OpenRequest) -> OpenResult:
    """Check, decrypt and export the bundle at `req.bundle` into the new directory `req.out`."""
    out = common.check_out_dir(req.out, req.data_root)
    root = req.bundle.absolute()
    bundle, bundle_sha = check_bundle(root, req.allowed_signers)
    signer = _check_sign_key(bundle, req.sign_key)
    ref = str(bundle["ref"])
    segments = bundle.get("segments") or []
    listed = {str(f["path"]): str(f["sha256"]) for f in bundle["files"]}
    archive = root / "archive" / ref
    total = sum((archive / f"{int(s['number']):06d}.age").stat().st_size for s in segments)
    common.make_dirs(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        sink = ExportSet(staging)
        bar = ProgressBar(req.progress, total)
        with bar.running():
            outcomes, done = [], 0
            for s in segments:
                sha = listed[_seg_path(ref, s)]
                outcomes.append(_open_segment(root, s, ref, req.identity, sink, bar, sha))
                done += (archive / f"{int(s['number']):06d}.age").stat().st_size
                bar.done_to(done)
        written = sink.close()
        for item in sink.incomplete:
            for o in outcomes:
                if item.startswith(o.segment + "/") and item not in o.incomplete:
                    o.incomplete.append(item)
        manifest = _manifest(req, bundle, bundle_sha, signer, outcomes, written)
        data = common.encode(manifest)
        bundle_bytes = (root / common.BUNDLE).read_bytes()
        if hashlib.sha256(bundle_bytes).hexdigest() != bundle_sha:  # changed since checked
            raise common.EvidenceError(f"changed file: {root / common.BUNDLE} (while opening)")
        common.write_new(staging / common.BUNDLE, bundle_bytes)
        common.write_new(staging / common.BUNDLE_SIG, (root / common.BUNDLE_SIG).read_bytes())
        common.write_new(staging / common.MANIFEST, data)
        signature = sshsig.sign(req.sign_key, data, common.NAMESPACE)
        common.write_new(staging / common.MANIFEST_SIG, signature)
        common.write_new(staging / common.SIGNER_FILE, signer_line(signer[1], signer[2]).encode())
        _sync_tree(staging)
        if out.exists():
            raise common.EvidenceError(f"--out {out}: appeared meanwhile; never written over")
        staging.rename(out)
        fsync_dir(out.parent)
    except FormatError as exc:  # a record the export formats cannot take (names its id)
        raise common.EvidenceError(f"export: {exc}") from None
    except OSError as exc:
        raise common.EvidenceError(f"cannot write to {out}: {exc.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OpenResult(
        out,
        len(written),
        sum(len(o.records) for o in outcomes),
        list(manifest["missing_records"]),
        list(manifest["incomplete_records"]),
        hashlib.sha256(data).hexdigest(),
    )

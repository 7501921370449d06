"""`lbm archive bundle` (gateway side): ciphertext evidence bundles, signed by the gateway key.

Nothing is decrypted here. After the access check (`access.check_access`: the login user maps to
an investigator assigned to REF, or a custodian; never REF's subject) and a check that REF's key
is wrapped to that investigator (else a rewrap is due), the archive's manifests, chain and
ciphertext hashes are verified (`store.manifest.verify_all`); then the selected segments, their
indexes, every manifest of the chain, chain.json, the wrapped keys (`keystore/REF/auth.age`,
`auth.pub`, `NNNNNN.age`) are copied into a new directory with the data directory's own layout
(so `store.framing.open_segment` reads a bundle as it reads a data directory), and BUNDLE.json
lists every file with its SHA-256 and size, the authorisation's details, the gateway's id and
keys, the investigator (with their registered SSH key, which signs MANIFEST.json when the
bundle is opened), who made it and when. BUNDLE.json.sig is an SSHSIG by the gateway key,
namespace `lbm-evidence`, checkable with `ssh-keygen -Y verify` and the line `lbm status` prints.

The bundle is staged in a hidden sibling directory and renamed into place only when complete;
the output directory must not exist and never lies inside the data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.evidence import bundle_common as common
from appliance.evidence.access import AccessRefused, Acting, check_access
from appliance.policy.model import Authorisation
from appliance.policy.registry_store import load_one
from store import ArchiveError, signing, sshsig
from store import sqlite as store_sqlite
from store.archive_stage import staged_paths
from store.clock import format_utc, parse_utc
from store.keys import KeyStore, check_ref
from store.manifest import MANIFEST_RE, verify_all
from store.paths import DataPaths

RECORD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}/\d{6,9}/[1-9]\d*")
MODE_BUNDLE = "bundle"
MODE_EXPORT = "gateway-export"


@dataclass(frozen=True)
class Selection:
    """What to bundle: everything (the default), or records by time, channel or id."""

    start: datetime | None = None
    end: datetime | None = None
    channels: tuple[str, ...] = ()
    records: tuple[str, ...] = ()

    @property
    def filtered(self) -> bool:
        return bool(self.start or self.end or self.channels or self.records)

    def wants(self, entry: dict[str, Any]) -> bool:
        if self.records:
            return str(entry.get("id")) in self.records
        if self.channels and entry.get("channel") not in self.channels:
            return False
        if self.start or self.end:
            try:
                ts = parse_utc(str(entry.get("ts")))
            except ValueError:
                return False
            if (self.start and ts < self.start) or (self.end and ts >= self.end):
                return False
        return True

    def as_dict(self) -> dict[str, Any] | None:
        if not self.filtered:
            return None
        return {
            "from": format_utc(self.start) if self.start else None,
            "to": format_utc(self.end) if self.end else None,
            "channels": list(self.channels),
            "records": list(self.records),
        }


@dataclass(frozen=True)
class GatewaySide:
    """What the gateway contributes: its data directory, id, key and configuration."""

    paths: DataPaths
    gateway_id: str
    gateway_key: signing.GatewayKey
    custodians: tuple[str, ...]
    notice_version: str
    login: str
    now: datetime


@dataclass
class BundleResult:
    out: Path
    sha256: str
    segments: list[str]
    records: int
    skipped: list[str] = field(default_factory=list)


def authorise(side: GatewaySide, ref: str) -> tuple[Acting, Authorisation]:
    """The acting investigator and REF's authorisation, or AccessRefused saying why."""
    acting = check_access(side.paths.registry, side.login, ref, side.custodians)
    conn = store_sqlite.connect(side.paths.registry, readonly=True)
    try:
        auth = load_one(conn, ref)
    finally:
        conn.close()
    if auth is None:  # checked by check_access; a race with nothing else
        raise AccessRefused(f"{ref}: no such authorisation")
    if acting.basis == "assigned" and acting.name not in auth.wrapped_to:
        raise AccessRefused(
            f"{ref}: the authorisation key is not wrapped to investigator {acting.name} yet (a "
            f"rewrap is due: a current holder runs `lbm keys rewrap {ref} --identity FILE`)"
        )
    return acting, auth


def read_index(path: Path) -> list[dict[str, Any]]:
    """A segment's plaintext index (a torn last line of a cut-off segment is dropped)."""
    items: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_bytes().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                break
            if isinstance(item, dict):
                items.append(item)
    return items


@dataclass
class _Plan:
    segments: list[dict[str, Any]] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)  # relative paths, data dir layout
    skipped: list[str] = field(default_factory=list)
    found: set[str] = field(default_factory=set)


def _plan(paths: DataPaths, ref: str, selection: Selection) -> _Plan:
    directory = paths.archive / ref
    keystore = KeyStore(paths)
    plan = _Plan()
    manifests = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(directory)
        if (m := MANIFEST_RE.fullmatch(name))
    )
    for number, name in manifests:
        plan.copies.append(f"archive/{ref}/{name}")
        manifest = json.loads((directory / name).read_bytes())
        index = read_index(directory / f"{number:06d}.index.jsonl")
        chosen = [str(e["id"]) for e in index if selection.wants(e)]
        plan.found.update(chosen)
        if selection.filtered and not chosen:
            continue
        seg = f"{ref}/{number:06d}"
        if not keystore.segment_key_path(ref, number).exists():
            plan.skipped.append(f"{seg}: segment key destroyed (shredded)")
            continue
        if not (directory / f"{number:06d}.age").exists():
            plan.skipped.append(f"{seg}: segment file removed")
            continue
        plan.segments.append(
            {
                "segment": seg,
                "number": number,
                "truncated": bool(manifest.get("truncated")),
                "records": len(index),
                "selected": chosen if selection.filtered else None,
                "ciphertext_sha256": manifest.get("ciphertext_sha256"),
            }
        )
        plan.copies += [f"archive/{ref}/{number:06d}.age", f"keystore/{ref}/{number:06d}.age"]
        if (directory / f"{number:06d}.index.jsonl").exists():
            plan.copies.append(f"archive/{ref}/{number:06d}.index.jsonl")
    plan.copies += [f"archive/{ref}/chain.json", f"keystore/{ref}/auth.age"]
    plan.copies.append(f"keystore/{ref}/auth.pub")
    return plan


def _copy(src: Path, dst: Path) -> dict[str, Any]:
    """Copy one file (0600), hashing what was written; returns its list entry."""
    common.make_dirs(dst.parent)
    digest = hashlib.sha256()
    size = 0
    fd = common.create_file(dst)
    try:
        with src.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"sha256": digest.hexdigest(), "size": size}


def gateway_info(side: GatewaySide) -> dict[str, Any]:
    line = signing.public_openssh(side.gateway_key.public)
    return {
        "id": side.gateway_id,
        "public_key": line,
        "fingerprint": sshsig.fingerprint(line),
        "key_sha256": side.gateway_key.fingerprint,
        "allowed_signers": f'{side.gateway_id} namespaces="{common.NAMESPACE}" {line}',
        "manifest_keys": {
            fp: signing.public_openssh(key)
            for fp, key in sorted(signing.load_public_keys(side.paths).items())
        },
    }


def make_bundle(
    side: GatewaySide,
    ref: str,
    out: Path,
    acting: Acting,
    auth: Authorisation,
    selection: Selection = Selection(),
    *,
    mode: str = MODE_BUNDLE,
) -> BundleResult:
    """Verify REF's archive and write a signed ciphertext bundle to `out` (new directory).
    An archive on object storage is read through a private working copy of its ciphertext
    (store/archive_stage.py), removed afterwards."""
    check_ref(ref)
    out = common.check_out_dir(out, side.paths.root)
    try:
        with staged_paths(side.paths, [ref]) as paths:
            staged = dataclasses.replace(side, paths=paths)
            return _make(staged, ref, out, acting, auth, selection, mode)
    except ArchiveError as exc:
        raise common.EvidenceError(str(exc)) from None


def _make(
    side: GatewaySide,
    ref: str,
    out: Path,
    acting: Acting,
    auth: Authorisation,
    selection: Selection,
    mode: str,
) -> BundleResult:
    inv = acting.investigator
    if mode == MODE_BUNDLE and not inv.ssh_key:
        raise common.EvidenceError(
            f"investigator {inv.name} has no registered signing key, so the MANIFEST.json of the "
            "opened bundle could not be checked (register it: lbm keys investigator add ... "
            "--sign-key PUBKEY_FILE)"
        )
    directory = side.paths.archive / ref
    if not directory.is_dir():
        raise common.EvidenceError(f"{ref}: no archive for this reference")
    report = verify_all(side.paths.archive, signing.load_public_keys(side.paths), ref)
    if not report.ok:
        raise common.EvidenceError(
            f"{ref}: the archive fails verification, nothing bundled: " + "; ".join(report.problems)
        )
    plan = _plan(side.paths, ref, selection)
    unknown = [r for r in selection.records if r not in plan.found]
    if unknown:
        raise common.EvidenceError(f"{ref}: no such record in the archive: {', '.join(unknown)}")
    if not plan.segments:
        raise common.EvidenceError(f"{ref}: nothing to bundle (no sealed segment matches)")
    plan.skipped += [f"{s}: still being written (not sealed)" for s in report.open_segments]
    common.make_dirs(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        files = []
        for rel in plan.copies:
            src = side.paths.root / rel
            if not src.exists():
                if rel.endswith("chain.json"):
                    continue
                raise common.EvidenceError(f"{ref}: {rel} is missing from the data directory")
            files.append({"path": rel, **_copy(src, staging / rel)})
        doc = {
            "format": common.BUNDLE_FORMAT,
            "mode": mode,
            "ref": ref,
            "authorisation": common.authorisation_details(auth),
            "gateway": gateway_info(side),
            "investigator": {
                "name": inv.name,
                "principal": inv.principal,
                "login": acting.login,
                "basis": acting.basis,
                "recipient": inv.recipient,
                "ssh_key": inv.ssh_key,
            },
            "made_by": side.login,
            "made_at": format_utc(side.now),
            "notice": {"version": side.notice_version, "source": "[notice] version at bundling"},
            "software": {"name": common.SOFTWARE, "version": common.software_version()},
            "selection": selection.as_dict(),
            "segments": plan.segments,
            "skipped": plan.skipped,
            "files": sorted(files, key=lambda f: f["path"]),
        }
        data = common.encode(doc)
        common.write_new(staging / common.BUNDLE, data)
        signature = sshsig.sign(side.gateway_key.private, data, common.NAMESPACE)
        common.write_new(staging / common.BUNDLE_SIG, signature)
        if os.path.lexists(out):
            raise common.EvidenceError(f"--out {out}: appeared meanwhile; never written over")
        os.rename(staging, out)
    except OSError as exc:
        raise common.EvidenceError(f"cannot write the bundle to {out}: {exc.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    records = sum(
        len(s["selected"]) if s["selected"] is not None else s["records"] for s in plan.segments
    )
    return BundleResult(
        out,
        hashlib.sha256(data).hexdigest(),
        [s["segment"] for s in plan.segments],
        records,
        plan.skipped,
    )


def parse_record_ids(ref: str, ids: Sequence[str]) -> tuple[str, ...]:
    """--record values: REF/NNNNNN/N of this REF; ValueError naming the bad one."""
    for rid in ids:
        if not RECORD_ID_RE.fullmatch(rid) or rid.split("/", 1)[0] != ref:
            raise ValueError(f"--record {rid[:80]!r}: not a record id of {ref} (REF/NNNNNN/N)")
    return tuple(dict.fromkeys(ids))

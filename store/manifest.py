"""Signed segment manifests, the per-archive chain, and verification without decryption.

Each sealed segment gets NNNNNN.manifest.json: canonical JSON signed by the gateway key (Ed25519,
`store.signing`), carrying `chain_seq` and `prev_manifest_sha256`, the SHA-256 of the previous
manifest file in the archive's chain (chain order is the order segments were sealed, which can
differ from segment numbers when segments of one archive are written in parallel).
archive/REF/chain.json is the signed head (last chain_seq and manifest hash), so deleting the
newest segments is caught too. All chain appends of one archive take an flock on
archive/REF/.lock, so several daemons can archive for the same authorisation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from store import ArchiveError
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.segment import SEGMENT_RE, canonical, io_message, is_live
from store.signing import GatewayKey, verify

FORMAT = "lbm-segment-manifest/1"
HEAD_FORMAT = "lbm-archive-head/1"
GENESIS = "0" * 64
MANIFEST_RE = re.compile(r"^(\d{6,9})\.manifest\.json$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def archive_lock(directory: Path) -> Iterator[None]:
    ensure_dir(directory)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_head(directory: Path) -> dict[str, Any] | None:
    path = directory / "chain.json"
    try:
        head = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ArchiveError(f"{path}: not a valid chain head (run `lbm archive verify`)") from None
    if not isinstance(head, dict):
        raise ArchiveError(f"{path}: not a valid chain head")
    return head


def append(directory: Path, key: GatewayKey, fields: dict[str, Any]) -> tuple[str, int]:
    """Sign `fields` as the next manifest of the archive in `directory` (caller holds
    archive_lock). Returns (manifest sha256, chain_seq)."""
    head = _read_head(directory)
    seq = int(head["seq"]) + 1 if head else 1
    prev = str(head["manifest_sha256"]) if head else GENESIS
    manifest = {
        **fields,
        "format": FORMAT,
        "chain_seq": seq,
        "prev_manifest_sha256": prev,
        "key": key.fingerprint,
    }
    manifest["sig"] = key.sign(canonical(manifest))
    data = canonical(manifest) + b"\n"
    name = f"{int(fields['segment']):06d}.manifest.json"
    digest = hashlib.sha256(data).hexdigest()
    new_head = {
        "format": HEAD_FORMAT,
        "ref": fields["ref"],
        "seq": seq,
        "segment": fields["segment"],
        "manifest_sha256": digest,
        "key": key.fingerprint,
    }
    new_head["sig"] = key.sign(canonical(new_head))
    written = False
    try:
        atomic_write(directory / name, data)
        written = True
        atomic_write(directory / "chain.json", canonical(new_head) + b"\n")
    except OSError as exc:
        if written:  # keep manifests and head consistent: the seal is retried as a whole
            with contextlib.suppress(OSError):
                (directory / name).unlink()
                fsync_dir(directory)
        raise ArchiveError(
            f"archive {fields['ref']}: cannot write manifest {name}: {io_message(exc)}"
        ) from None
    return digest, seq


@dataclass
class VerifyReport:
    ok: bool = True
    archives: int = 0
    segments: int = 0
    on_record: int = 0  # sealed segments the audit log records (store/archive_audit.py)
    open_segments: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)


def _check_signed(obj: Any, keys: dict[str, Ed25519PublicKey]) -> bool:
    if not isinstance(obj, dict) or "sig" not in obj:
        return False
    body = {k: v for k, v in obj.items() if k != "sig"}
    return verify(keys, str(body.get("key")), canonical(body), str(obj["sig"]))


def verify_archive(
    directory: Path, keys: dict[str, Ed25519PublicKey], report: VerifyReport
) -> None:
    """Check one archive's manifests, chain, head, ciphertext and index hashes."""
    ref = directory.name
    report.archives += 1
    names = sorted(os.listdir(directory))
    segments = {int(m.group(1)) for n in names if (m := SEGMENT_RE.fullmatch(n))}
    manifests: list[tuple[int, dict[str, Any], str]] = []
    for name in names:
        m = MANIFEST_RE.fullmatch(name)
        if not m:
            continue
        number = int(m.group(1))
        where = f"{ref}/{m.group(1)}"
        raw = (directory / name).read_bytes()
        try:
            manifest = json.loads(raw)
        except ValueError:
            report.bad(f"{where}: manifest is not valid JSON (altered)")
            continue
        if not _check_signed(manifest, keys):
            report.bad(
                f"{where}: manifest signature does not verify (altered, or signed by an "
                "unknown key)"
            )
            continue
        if manifest.get("ref") != ref or manifest.get("segment") != number:
            report.bad(
                f"{where}: manifest names {manifest.get('ref')}/"
                f"{manifest.get('segment')} (segments renamed or reordered)"
            )
            continue
        manifests.append((number, manifest, hashlib.sha256(raw).hexdigest()))
        _check_files(directory, where, number, manifest, report)
    report.segments += len(manifests)
    sealed = {number for number, _, _ in manifests}
    for number in sorted(segments - sealed):
        where = f"{ref}/{number:06d}"
        if is_live(directory / f"{number:06d}.age"):
            report.open_segments.append(where)
        else:
            report.bad(
                f"{where}: segment has no manifest and no writer (cut off by a crash: "
                "run recovery, or a manifest was deleted)"
            )
    _check_chain(directory, ref, manifests, keys, report)


def _check_files(
    directory: Path, where: str, number: int, manifest: dict[str, Any], report: VerifyReport
) -> None:
    seg = directory / f"{number:06d}.age"
    if not seg.exists():
        report.bad(f"{where}: segment file {seg.name} is missing")
    elif sha256_file(seg) != manifest.get("ciphertext_sha256"):
        report.bad(f"{where}: ciphertext SHA-256 does not match the manifest (segment altered)")
    index = directory / f"{number:06d}.index.jsonl"
    if index.exists() and sha256_file(index) != manifest.get("index_sha256"):
        report.bad(f"{where}: index SHA-256 does not match the manifest (index altered)")
    elif not index.exists() and manifest.get("index_sha256") != hashlib.sha256().hexdigest():
        report.bad(f"{where}: index file {index.name} is missing")
    if manifest.get("truncated"):
        report.truncated.append(where)


def _check_chain(
    directory: Path,
    ref: str,
    manifests: list[tuple[int, dict[str, Any], str]],
    keys: dict[str, Ed25519PublicKey],
    report: VerifyReport,
) -> None:
    ordered = sorted(manifests, key=lambda item: int(item[1].get("chain_seq", 0)))
    prev = GENESIS
    prev_where = "the start of the chain"
    for expected, (number, manifest, digest) in enumerate(ordered, 1):
        where = f"{ref}/{number:06d}"
        if manifest.get("chain_seq") != expected:
            report.bad(
                f"{where}: chain position {manifest.get('chain_seq')}, expected "
                f"{expected} (a segment before it was deleted)"
            )
            return
        if manifest.get("prev_manifest_sha256") != prev:
            report.bad(
                f"{where}: chain broken: previous-manifest hash does not match "
                f"{prev_where} (a segment was deleted, replaced or reordered)"
            )
            return
        prev, prev_where = digest, where
    head_path = directory / "chain.json"
    try:
        head = json.loads(head_path.read_bytes())
    except FileNotFoundError:
        if ordered:
            report.bad(f"{ref}: chain head chain.json is missing")
        return
    except ValueError:
        report.bad(f"{ref}: chain head chain.json is not valid JSON (altered)")
        return
    if not _check_signed(head, keys):
        report.bad(f"{ref}: chain head signature does not verify (altered)")
    elif head.get("seq") != len(ordered) or head.get("manifest_sha256") != prev:
        report.bad(
            f"{ref}: chain head names position {head.get('seq')} (segment "
            f"{head.get('segment')}), the archive ends at {len(ordered)} (newest "
            "segments deleted or replaced)"
        )


def verify_all(
    archive_root: Path, keys: dict[str, Ed25519PublicKey], ref: str | None = None
) -> VerifyReport:
    report = VerifyReport()
    if ref is not None:
        directory = archive_root / ref
        if not directory.is_dir():
            report.bad(f"{ref}: no archive for this reference")
            return report
        verify_archive(directory, keys, report)
        return report
    if archive_root.is_dir():
        for entry in sorted(archive_root.iterdir()):
            if entry.is_dir():
                verify_archive(entry, keys, report)
    return report

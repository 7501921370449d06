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
from typing import TYPE_CHECKING, Any

from store import ArchiveError
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.segment import SEGMENT_RE, canonical, io_message, is_live
from store.signing import GatewayKey, verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def read_manifests(directory: Path) -> dict[int, dict[str, Any]]:
    """Every manifest of one archive by segment number (unverified: `lbm archive verify` does
    that); an unreadable one is skipped."""
    found: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            m = MANIFEST_RE.fullmatch(name)
            if not m:
                continue
            try:
                obj = json.loads((directory / name).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(obj, dict):
                found[int(m.group(1))] = obj
    return found


def amendments(manifests: dict[int, dict[str, Any]]) -> dict[int, tuple[int, dict[str, Any]]]:
    """Replaced segment number -> (replacement number, amendment) from the manifests."""
    out: dict[int, tuple[int, dict[str, Any]]] = {}
    for number, manifest in manifests.items():
        amend = manifest.get("amendment")
        if isinstance(amend, dict) and isinstance(amend.get("replaces"), int):
            out[amend["replaces"]] = (number, amend)
    return out


@dataclass
class VerifyReport:
    ok: bool = True
    archives: int = 0
    segments: int = 0
    on_record: int = 0  # sealed segments the audit log records (store/archive_audit.py)
    open_segments: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    amended: list[str] = field(default_factory=list)  # "OLD -> NEW (record ..., proposal ...)"
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
    _check_amendments(directory, ref, manifests, report)


def _index_ids(path: Path) -> set[str]:
    ids: set[str] = set()
    with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
        for line in fh:
            try:
                item = json.loads(line)
            except ValueError:
                break
            if isinstance(item, dict):
                ids.add(str(item.get("id")))
    return ids


def _check_amendments(
    directory: Path,
    ref: str,
    manifests: list[tuple[int, dict[str, Any], str]],
    report: VerifyReport,
) -> None:
    """A collateral amendment (docs/archive-format.md "Amendments") must name a segment sealed
    before it in the chain, by the hashes of its manifest and ciphertext; the removed record must
    be in that segment's index and not in the replacement's, which holds nothing else new."""
    by_number = {number: (manifest, digest) for number, manifest, digest in manifests}
    replaced: dict[int, int] = {}
    for number, manifest, _ in sorted(manifests, key=lambda m: int(m[1].get("chain_seq", 0))):
        amend = manifest.get("amendment")
        if amend is None:
            continue
        where = f"{ref}/{number:06d}"
        if not isinstance(amend, dict) or not isinstance(amend.get("replaces"), int):
            report.bad(f"{where}: amendment is malformed")
            continue
        old = int(amend["replaces"])
        old_where = f"{ref}/{old:06d}"
        if old not in by_number:
            report.bad(f"{where}: amendment replaces {old_where}, which has no valid manifest")
            continue
        if old in replaced:
            report.bad(f"{old_where}: replaced twice ({ref}/{replaced[old]:06d} and {where})")
            continue
        replaced[old] = number
        old_manifest, old_digest = by_number[old]
        if int(old_manifest.get("chain_seq", 0)) >= int(manifest.get("chain_seq", 0)):
            report.bad(f"{where}: amendment precedes the segment it replaces in the chain")
        if amend.get("replaced_manifest_sha256") != old_digest or amend.get(
            "replaced_ciphertext_sha256"
        ) != old_manifest.get("ciphertext_sha256"):
            report.bad(f"{where}: amendment does not match {old_where}'s manifest (replaced)")
        removed = amend.get("removed_record")
        old_ids = _index_ids(directory / f"{old:06d}.index.jsonl")
        new_ids = _index_ids(directory / f"{number:06d}.index.jsonl")
        if removed not in old_ids or removed in new_ids or new_ids - old_ids:
            report.bad(
                f"{where}: replacement's records are not {old_where}'s without {removed} "
                "(amendment or index altered)"
            )
            continue
        report.amended.append(
            f"{old_where} -> {where} (record {removed} removed, proposal {amend.get('proposal')})"
        )


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

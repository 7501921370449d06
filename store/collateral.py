"""Collateral intrusion removal at the store level: a sealed segment rewritten without a record.

`remove_record` (steps in docs/collateral.md): find the record in a sealed, current segment
(`locate`); with the approver's identity, in memory only, stream the old plaintext into a
replacement staged in `archive/REF/.collateral-*` under a fresh segment key wrapped to
`auth.pub`, every other record keeping its header (so its id) and bytes; under the archive lock,
place it as the next segment with a signed manifest carrying an `amendment` (audited
`segment_close`); then shred the old segment's wrapped key, so every copy of it is unreadable.
Its ciphertext, index and manifest stay, so the chain still verifies. A crash after the chain
append is finished by running it again (the amendment names the proposal). Errors are
`CollateralError` with a `code` for the audit log, never content.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store import ArchiveError, KeyError_, StoreError
from store import agefile as age
from store import manifest as chain
from store.archive_audit import on_record
from store.archive_stage import index_lines, restore_segment
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc
from store.framing import PlainStream, iter_events
from store.fsutil import atomic_write, fsync_dir
from store.keys import KeyStore, check_ref, shred
from store.manifest import amendments, read_manifests
from store.paths import DataPaths
from store.recovery import closing_fields
from store.segment import RecordInfo, SegmentWriter, canonical, is_live, known_segment_numbers
from store.signing import GatewayKey

AMENDMENT_KIND = "collateral_removal"


class CollateralError(StoreError):
    """A removal is refused or failed; `code` names the reason for the audit log."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def seg_id(ref: str, number: int) -> str:
    return f"{ref}/{number:06d}"


@dataclass(frozen=True)
class Located:
    ref: str
    segment: int
    record: dict[str, Any]  # its index line (no content)


def locate(paths: DataPaths, ref: str, record_id: str) -> Located:
    """The sealed, current segment holding `record_id`, or CollateralError saying why not."""
    directory = paths.archive / check_ref(ref)
    replaced = amendments(read_manifests(directory))
    removed_by = [a for _, a in replaced.values() if a.get("removed_record") == record_id]
    if removed_by:
        raise CollateralError(
            "already_removed",
            f"record {record_id} was removed already (proposal {removed_by[0].get('proposal')})",
        )
    for number in known_segment_numbers(directory):  # uploaded ones: their index from the store
        if number in replaced:
            continue
        for line in index_lines(paths, ref, number):
            if line.get("id") != record_id:
                continue
            sid = seg_id(ref, number)
            if not (directory / f"{number:06d}.manifest.json").exists():
                if is_live(directory / f"{number:06d}.age"):
                    raise CollateralError(
                        "open_segment",
                        f"record {record_id} is in segment {sid}, which is still being "
                        "written (open segments seal within 60 s of their first record, or "
                        "when their daemon stops): try again once it is sealed",
                    )
                raise CollateralError(
                    "cut_off_segment",
                    f"record {record_id} is in segment {sid}, which was cut off and is not "
                    f"sealed yet: run `lbm archive recover {ref}` first",
                )
            return Located(ref, number, line)
    raise CollateralError("unknown_record", f"{ref}: no record {record_id} in the archive index")


@dataclass(frozen=True)
class Removal:
    ref: str
    record_id: str
    old_segment: int
    new_segment: int
    records_kept: int
    manifest_sha256: str
    chain_seq: int
    key_destroyed: bool
    resumed: bool

    def as_audit(self) -> dict[str, Any]:
        """Tombstone fields (store/archive_audit.py reads `segment` as replaced)."""
        return {
            "record_id": self.record_id,
            "segment": seg_id(self.ref, self.old_segment),
            "new_segment": seg_id(self.ref, self.new_segment),
            "records_kept": self.records_kept,
            "amendment_manifest_sha256": self.manifest_sha256,
            "chain_seq": self.chain_seq,
            "old_segment_key_destroyed": self.key_destroyed,
        }


class _CopyWriter(SegmentWriter):
    """A SegmentWriter that copies records with their original headers (and so their ids)."""

    def copy_header(self, header: dict[str, Any]) -> None:
        record_id = str(header["id"])
        n = int(record_id.rsplit("/", 1)[1])
        principal = header.get("principal")
        self._current = RecordInfo(
            record_id,
            n,
            str(header.get("channel")),
            str(header.get("kind")),
            str(header.get("ts")),
            str(principal) if principal is not None else None,
            self.offset,
            0,
            0,
        )
        self._plain(canonical(header) + b"\n")


@dataclass
class _Staged:
    directory: Path  # the staging directory
    writer: _CopyWriter
    wrapped_key: bytes
    key_fp: str
    opened_at: str
    removed_seen: bool


def _stage(
    paths: DataPaths, clock: Clock, ref: str, old: int, record_id: str, identity_text: str
) -> _Staged:
    """Write the replacement into a staging directory (steps 2 of the module doc)."""
    keystore = KeyStore(paths)
    directory = paths.archive / ref
    manifest = read_manifests(directory).get(old, {})
    old_path = directory / f"{old:06d}.age"
    if chain.sha256_file(old_path) != manifest.get("ciphertext_sha256"):
        raise CollateralError(
            "altered_segment",
            f"segment {seg_id(ref, old)}: ciphertext does not match its manifest (run "
            "`lbm archive verify`); nothing was changed",
        )
    try:
        auth_secret = keystore.unwrap_authorisation(ref, identity_text)
        old_key = keystore.unwrap_segment(ref, old, auth_secret)
    except KeyError_ as exc:
        raise CollateralError("not_holder", str(exc)) from None
    del auth_secret
    secret, public = age.generate()
    label = f"lbm segment key for {ref} (replacement of {old:06d})"
    text = age.identity_file_text(secret, [label])
    wrapped = age.encrypt_bytes(text.encode(), [keystore.authorisation_public(ref)])
    del secret, text
    staging = Path(tempfile.mkdtemp(prefix=".collateral-", dir=directory))
    writer: _CopyWriter | None = None
    try:
        fd = os.open(staging / "000000.age", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        writer = _CopyWriter(staging, ref, 0, fd, public)
        staged = _Staged(
            staging,
            writer,
            wrapped,
            age.recipient_fingerprint(public),
            format_utc(clock.now()),
            False,
        )
        with old_path.open("rb") as fh:
            reader = age.AgeReader(fh, [old_key], allow_truncated=bool(manifest.get("truncated")))
            skipping = False
            for kind, value in iter_events(PlainStream(reader.chunks())):
                if kind == "header":
                    skipping = value.get("id") == record_id
                    staged.removed_seen |= skipping
                    if not skipping:
                        writer.copy_header(value)
                elif skipping:
                    continue
                elif kind == "data":
                    writer.write(value)
                elif value is not None:  # "end", or "cut" inside a record: kept, as aborted
                    writer.end_record(aborted=kind == "cut" or bool(value.get("aborted")))
        writer.finish()
        _ = writer.ciphertext_sha256  # hashed now: release() stops the hash worker
        writer.release()
        return staged
    except BaseException as exc:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.release()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, age.AgeError):
            raise CollateralError(
                "unreadable_segment", f"segment {seg_id(ref, old)}: {exc}"
            ) from None
        raise


def _fields(ref: str, number: int, staged: _Staged, auth_fp: str, clock: Clock) -> dict[str, Any]:
    w = staged.writer
    ts = sorted(r.ts for r in w.records)
    return {
        "ref": ref,
        "segment": number,
        "file": f"{number:06d}.age",
        "principals": sorted({r.principal for r in w.records if r.principal}),
        "channels": sorted({r.channel for r in w.records}),
        "kinds": sorted({r.kind for r in w.records}),
        "first_ts": ts[0] if ts else None,
        "last_ts": ts[-1] if ts else None,
        "opened_at": staged.opened_at,
        "closed_at": format_utc(clock.now()),
        "records": len(w.records),
        "ciphertext_sha256": w.ciphertext_sha256,
        "ciphertext_bytes": w.ciphertext_bytes,
        "plaintext_bytes": w.offset,
        "index_sha256": chain.sha256_file(w.index_path),
        "segment_key_fingerprint": staged.key_fp,
        "authorisation_key_fingerprint": auth_fp,
        "truncated": False,
    }


def _commit(
    paths: DataPaths, key: GatewayKey, staged: _Staged, fields: dict[str, Any]
) -> tuple[int, str]:
    """Step 3; the caller holds the archive lock. Returns (number, manifest sha256)."""
    ref = fields["ref"]
    directory = paths.archive / ref
    keystore = KeyStore(paths)
    numbers = known_segment_numbers(directory)  # uploaded ones too: never reuse a number
    number = (numbers[-1] if numbers else 0) + 1
    while keystore.segment_key_path(ref, number).exists():
        number += 1  # never reuse the number of a key left behind
    fields = {**fields, "segment": number, "file": f"{number:06d}.age"}
    key_path = keystore.segment_key_path(ref, number)
    placed: list[Path] = []
    try:
        atomic_write(key_path, staged.wrapped_key, 0o600)
        placed.append(key_path)
        for suffix in (".index.jsonl", ".age"):
            target = directory / f"{number:06d}{suffix}"
            os.rename(staged.directory / f"000000{suffix}", target)
            placed.append(target)
        fsync_dir(directory)
        digest, _ = chain.append(directory, key, fields)
    except (OSError, ArchiveError) as exc:
        for path in reversed(placed):  # no segment without a manifest is left behind
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(directory)
        why = str(exc) if isinstance(exc, ArchiveError) else exc.strerror
        raise CollateralError(
            "write_failed", f"archive {ref}: cannot place replacement: {why}"
        ) from None
    return number, digest


def _audit_seal(audit: AuditLog | None, actor: str, manifest: dict[str, Any], digest: str) -> None:
    if audit is None:
        return
    fields = closing_fields(manifest, digest, int(manifest["chain_seq"]))
    amend = manifest["amendment"]
    audit.append(
        Action.SEGMENT_CLOSE,
        actor,
        refs=(manifest["ref"],),
        **fields,
        replaces=seg_id(manifest["ref"], int(amend["replaces"])),
        proposal=amend.get("proposal"),
    )


def remove_record(
    paths: DataPaths,
    key: GatewayKey,
    clock: Clock,
    audit: AuditLog | None,
    actor: str,
    ref: str,
    record_id: str,
    identity_text: str,
    *,
    proposal: int,
    proposer: str,
    approver: str,
) -> Removal:
    """Remove `record_id` from REF's archive (the module doc's steps 1-4)."""
    directory = paths.archive / check_ref(ref)
    done = _amendment_for(directory, proposal)
    staged: _Staged | None = None
    if done is None:
        old = locate(paths, ref, record_id).segment
        restore_segment(paths, ref, old)  # uploaded: its ciphertext back here to be read
        staged = _stage(paths, clock, ref, old, record_id, identity_text)
        try:
            if not staged.removed_seen:
                raise CollateralError(
                    "unknown_record",
                    f"record {record_id} is listed in {seg_id(ref, old)}'s index but not in "
                    "its authenticated plaintext (truncated segment); nothing was changed",
                )
            auth_fp = age.recipient_fingerprint(KeyStore(paths).authorisation_public(ref))
            fields = _fields(ref, 0, staged, auth_fp, clock)
            with chain.archive_lock(directory):
                manifests = read_manifests(directory)
                done = _amendment_for(directory, proposal, manifests)
                if done is None:
                    if old in amendments(manifests):
                        raise CollateralError(
                            "segment_replaced",
                            f"segment {seg_id(ref, old)} was replaced meanwhile (another "
                            "removal): run the approval again",
                        )
                    old_manifest = manifests[old]
                    fields["amendment"] = {
                        "kind": AMENDMENT_KIND,
                        "proposal": proposal,
                        "replaces": old,
                        "replaced_ciphertext_sha256": old_manifest.get("ciphertext_sha256"),
                        "replaced_manifest_sha256": chain.sha256_file(
                            directory / f"{old:06d}.manifest.json"
                        ),
                        "removed_record": record_id,
                        "proposer": proposer,
                        "approver": approver,
                    }
                    number, digest = _commit(paths, key, staged, fields)
                    manifest = read_manifests(directory)[number]
                    _audit_seal(audit, actor, manifest, digest)
                    return _finish(paths, ref, record_id, number, manifest, digest, False)
        finally:
            shutil.rmtree(staged.directory, ignore_errors=True)
    number, manifest = done
    digest = chain.sha256_file(directory / f"{number:06d}.manifest.json")
    if audit is not None and (ref, number) not in on_record(audit.entries()).seals:
        _audit_seal(audit, actor, manifest, digest)
    return _finish(paths, ref, record_id, number, manifest, digest, True)


def _amendment_for(
    directory: Path, proposal: int, manifests: dict[int, dict[str, Any]] | None = None
) -> tuple[int, dict[str, Any]] | None:
    found = read_manifests(directory) if manifests is None else manifests
    for new, amend in amendments(found).values():
        if amend.get("proposal") == proposal and amend.get("kind") == AMENDMENT_KIND:
            return new, found[new]
    return None


def _finish(
    paths: DataPaths,
    ref: str,
    record_id: str,
    number: int,
    manifest: dict[str, Any],
    digest: str,
    resumed: bool,
) -> Removal:
    """Step 4: shred the replaced segment's wrapped key."""
    old = int(manifest["amendment"]["replaces"])
    try:
        keystore = KeyStore(paths)
        destroyed = shred(keystore.segment_key_path(ref, old))
        # and in the keystore bucket (store/keystore_remote.py; retried if unreachable)
        destroyed = keystore.shred_segment_elsewhere(ref, old) == "deleted" or destroyed
    except OSError as exc:
        raise CollateralError(
            "write_failed",
            f"replacement {seg_id(ref, number)} is in the chain but the wrapped key of "
            f"{seg_id(ref, old)} could not be destroyed ({exc.strerror}): run the approval again",
        ) from None
    records, seq = int(manifest["records"]), int(manifest["chain_seq"])
    return Removal(ref, record_id, old, number, records, digest, seq, destroyed, resumed)

"""Cross-checking archives against the audit log: what the log says was sealed must still exist.

The manifest chain (store/manifest.py) catches edits inside an archive, but not its removal
along with its head: `rm -r archive/REF` or deleting a wrapped key leaves nothing to compare
with. The audit log, hash-chained and signed (and witnessed off the box), remembers every seal:
each `segment_close` / `segment_truncated` entry names the reference, the segment number and
the ciphertext hash. So every sealed segment the log knows must be present, with its manifest
and its wrapped key `keystore/REF/NNNNNN.age`, and every authorisation the log or the registry
knows must keep `keystore/REF/auth.age`, unless the destruction is on record:

- `key_destroy` with `key: "segment"` and `segment: "REF/NNNNNN"`: that segment's key (and so the
  segment, crypto-shredded) may be gone;
- `key_destroy` with `key: "authorisation"` (refs [REF]): auth.age and every segment of REF;
- `collateral_approve` with `segment` or `segments` ("REF/NNNNNN"): the replaced segments;
- `purge` (refs [REF]) with `segments` listing what was purged, or without it (or with
  `whole_archive: true`, as retention writes): the whole REF.

This module only reads the log (`AuditLog.entries()`); whether the log itself is intact is
`lbm audit verify`'s question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store.audit import Action
from store.keys import REF_RE
from store.manifest import VerifyReport, amendments, read_manifests
from store.paths import DataPaths

SEALS = (Action.SEGMENT_CLOSE.value, Action.SEGMENT_TRUNCATED.value)
GRANTS = (Action.AUTH_GRANT.value, Action.AUTH_URGENT.value)

SegmentId = tuple[str, int]


@dataclass
class Seal:
    """One sealed segment as the audit log records it."""

    seq: int
    ciphertext_sha256: str | None
    key_expected: bool


@dataclass
class OnRecord:
    """What the audit log says must exist, and what it says was destroyed."""

    seals: dict[SegmentId, Seal] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    auth_destroyed: set[str] = field(default_factory=set)
    segments_destroyed: set[SegmentId] = field(default_factory=set)
    purged: set[str] = field(default_factory=set)
    resealed: dict[SegmentId, tuple[int, int]] = field(default_factory=dict)
    # collateral removals: replaced segment -> (audit seq, the collateral_approve fields)
    collateral: dict[SegmentId, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def segment_gone(self, sid: SegmentId) -> bool:
        """True if the segment's destruction (or its archive's) is on record."""
        return sid in self.segments_destroyed or sid[0] in self.auth_destroyed | self.purged

    def sealed_in(self, ref: str) -> list[int]:
        return sorted(n for r, n in self.seals if r == ref)


def _segment_id(value: Any) -> SegmentId | None:
    """'REF/NNNNNN' -> (REF, N); None for anything else."""
    if not isinstance(value, str):
        return None
    ref, _, name = value.rpartition("/")
    if not REF_RE.fullmatch(ref) or not name.isdigit():
        return None
    return ref, int(name)


def _seal_id(fields: dict[str, Any]) -> SegmentId | None:
    ref, number = fields.get("ref"), fields.get("segment_number")
    if isinstance(ref, str) and isinstance(number, int) and REF_RE.fullmatch(ref):
        return ref, number
    return _segment_id(fields.get("segment"))  # entries written before ref/segment_number


def _listed(fields: dict[str, Any]) -> list[SegmentId]:
    values = fields.get("segments")
    items = [*values] if isinstance(values, list) else []
    items.append(fields.get("segment"))
    return [sid for v in items if (sid := _segment_id(v)) is not None]


def on_record(entries: Iterable[dict[str, Any]]) -> OnRecord:
    """Fold the audit entries into what must exist. Raises store.AuditError if unreadable."""
    found = OnRecord()
    for entry in entries:
        action = entry.get("action")
        raw = entry.get("fields")
        fields: dict[str, Any] = raw if isinstance(raw, dict) else {}
        refs = [r for r in entry.get("refs") or [] if isinstance(r, str) and REF_RE.fullmatch(r)]
        if action in SEALS:
            sid = _seal_id(fields)
            if sid is None:
                continue
            digest = fields.get("ciphertext_sha256")
            if sid in found.seals:  # a seal is never repeated unless a manifest was deleted
                found.resealed.setdefault(sid, (found.seals[sid].seq, int(entry.get("seq") or 0)))
            found.seals[sid] = Seal(
                int(entry.get("seq") or 0),
                digest if isinstance(digest, str) else None,
                fields.get("segment_key_present", True) is not False,
            )
            found.refs.add(sid[0])
        elif action in GRANTS:
            found.refs.update(refs)
        elif action == Action.KEY_DESTROY.value:
            if fields.get("key") == "authorisation":
                found.auth_destroyed.update(refs)
            else:
                found.segments_destroyed.update(_listed(fields))
        elif action == Action.COLLATERAL_APPROVE.value:
            found.segments_destroyed.update(_listed(fields))
            for sid in _listed(fields):
                found.collateral[sid] = (int(entry.get("seq") or 0), fields)
        elif action == Action.PURGE.value:
            listed = _listed(fields)
            if listed and fields.get("whole_archive") is not True:
                found.segments_destroyed.update(listed)
            else:
                found.purged.update(refs)
    return found


def cross_check(
    paths: DataPaths,
    record: OnRecord,
    report: VerifyReport,
    ref: str | None = None,
    known_refs: Iterable[str] = (),
) -> None:
    """Report every sealed segment, wrapped key or archive the log knows and the disk lacks."""
    refs = record.refs | {r for r in known_refs if REF_RE.fullmatch(r)}
    if ref is not None:
        refs &= {ref}
    for name in sorted(refs):
        if name in record.purged:
            continue
        if name not in record.auth_destroyed:
            auth = paths.keystore / name / "auth.age"
            if not auth.exists():
                report.bad(
                    f"{name}: wrapped authorisation key keystore/{name}/auth.age is missing, "
                    "and no destruction of it is on record in the audit log"
                )
        sealed = [n for n in record.sealed_in(name) if not record.segment_gone((name, n))]
        report.on_record += len(record.sealed_in(name))
        directory = paths.archive / name
        if not directory.is_dir():
            if sealed:
                report.bad(
                    f"{name}: archive directory archive/{name} is missing; the audit log "
                    f"records {len(sealed)} sealed segment(s) in it (first: "
                    f"{name}/{sealed[0]:06d}, audit seq {record.seals[(name, sealed[0])].seq})"
                )
            continue
        for number in sealed:
            _check_segment(paths, directory, name, number, record.seals[(name, number)], report)
        _check_collateral(paths, directory, name, record, report)
    for (name, number), (first, again) in sorted(record.resealed.items()):
        if name in refs:
            report.bad(
                f"{name}/{number:06d}: sealed twice (audit seq {first} and {again}): its "
                "manifest was deleted and recovery sealed the segment again"
            )


def _check_segment(
    paths: DataPaths, directory: Path, ref: str, number: int, seal: Seal, report: VerifyReport
) -> None:
    where = f"{ref}/{number:06d}"
    on_log = f"the audit log records it sealed (seq {seal.seq})"
    manifest_path = directory / f"{number:06d}.manifest.json"
    segment_path = directory / f"{number:06d}.age"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except ValueError:
            manifest = None  # reported by the manifest check
        digest = manifest.get("ciphertext_sha256") if isinstance(manifest, dict) else None
        if seal.ciphertext_sha256 and digest and digest != seal.ciphertext_sha256:
            report.bad(
                f"{where}: the manifest's ciphertext SHA-256 differs from the one {on_log} "
                "(segment and manifest replaced)"
            )
    elif segment_path.exists():
        report.bad(
            f"{where}: manifest {manifest_path.name} is missing but {on_log} (deleted; "
            "recovery will not re-seal it)"
        )
    else:
        report.bad(f"{where}: segment {segment_path.name} and its manifest are missing; {on_log}")
    key = paths.keystore / ref / f"{number:06d}.age"
    if seal.key_expected and not key.exists():
        report.bad(
            f"{where}: wrapped segment key keystore/{ref}/{key.name} is missing, and no "
            "destruction of it is on record in the audit log"
        )


def _check_collateral(
    paths: DataPaths, directory: Path, ref: str, record: OnRecord, report: VerifyReport
) -> None:
    """The chain's collateral amendments and the log's `collateral_approve` entries must agree,
    and a replaced segment's wrapped key must be gone (docs/collateral.md)."""
    in_chain = amendments(read_manifests(directory))
    for old, (new, amend) in sorted(in_chain.items()):
        where = f"{ref}/{old:06d}"
        approved = record.collateral.get((ref, old))
        if approved is None:
            report.bad(
                f"{where}: replaced by {ref}/{new:06d} (amendment, proposal "
                f"{amend.get('proposal')}) but no collateral_approve for it is on record in the "
                "audit log (an interrupted approval: run it again; otherwise forged)"
            )
            continue
        seq, fields = approved
        if (fields.get("record_id"), fields.get("proposal")) != (
            amend.get("removed_record"),
            amend.get("proposal"),
        ):
            report.bad(
                f"{where}: the chain's amendment (record {amend.get('removed_record')}, proposal "
                f"{amend.get('proposal')}) differs from the audit log's collateral_approve "
                f"(seq {seq})"
            )
    for (name, old), (seq, _) in sorted(record.collateral.items()):
        if name != ref:
            continue
        where = f"{ref}/{old:06d}"
        if old not in in_chain:
            report.bad(
                f"{where}: the audit log records its collateral removal (seq {seq}) but the "
                "archive's chain has no amendment replacing it"
            )
        if (paths.keystore / ref / f"{old:06d}.age").exists():
            report.bad(
                f"{where}: collateral removal on record (seq {seq}) but its wrapped key "
                f"keystore/{ref}/{old:06d}.age still exists: the segment is still readable"
            )

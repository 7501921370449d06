"""Sealing segments cut off by a crash or a failure, and the audit entries of every seal.

A segment with no manifest whose file no writer holds (store/segment.py's flock) was cut off: a
process died, or a write failed. `seal_truncated` gives it a signed manifest with `truncated:
true` over the file exactly as it is (nothing cut or rewritten), appends it to the archive's
chain and audits SEGMENT_TRUNCATED. `recover` does that for every cut-off segment of one or
every archive and audits one ARCHIVE_RECOVERED per archive it changed; it is idempotent.
`Archive.recover()` (daemon start) and `lbm archive recover` both come here.

`closing_fields` is the audit entry of a sealed segment (SEGMENT_CLOSE and SEGMENT_TRUNCATED),
carrying what `lbm archive verify` cross-checks against the files (store/archive_audit.py):
the reference, the segment number, the ciphertext hash, the segment key's fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store import KeyError_
from store import agefile as age
from store import manifest as chain
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc
from store.keys import KeyStore
from store.segment import is_live, segment_numbers
from store.signing import GatewayKey

CUT_OFF = "cut off (crash or failure)"


def closing_fields(fields: dict[str, Any], manifest_sha256: str, chain_seq: int) -> dict[str, Any]:
    """Audit fields of a sealed segment, from its manifest fields (no content, no principal)."""
    return {
        "segment": f"{fields['ref']}/{int(fields['segment']):06d}",
        "ref": fields["ref"],
        "segment_number": int(fields["segment"]),
        "records": fields["records"],
        "ciphertext_bytes": fields["ciphertext_bytes"],
        "ciphertext_sha256": fields["ciphertext_sha256"],
        "segment_key_fingerprint": fields["segment_key_fingerprint"],
        "manifest_sha256": manifest_sha256,
        "chain_seq": chain_seq,
    }


@dataclass
class Sealer:
    """What sealing a cut-off segment needs: the signing key, key store, clock and audit."""

    key: GatewayKey
    keystore: KeyStore
    clock: Clock
    audit: AuditLog | None
    actor: str

    def seal_truncated(self, directory: Path, number: int, reason: str) -> bool:
        """Caller holds the archive lock. True if a truncated manifest was written."""
        name = f"{number:06d}"
        seg = directory / f"{name}.age"
        index = directory / f"{name}.index.jsonl"
        if (directory / f"{name}.manifest.json").exists() or is_live(seg):
            return False
        ref = directory.name
        records = read_index(index)
        size = seg.stat().st_size
        try:
            with seg.open("rb") as fh:
                header_len = age.header_length(fh)
        except age.AgeError:
            header_len = -1
        if header_len < 0 and not records:  # never held a record: nothing to keep
            for path in (seg, index):
                path.unlink(missing_ok=True)
            with contextlib.suppress(KeyError_):
                self.keystore.destroy_segment(ref, number)
            return False
        try:
            auth_fp: str | None = age.recipient_fingerprint(self.keystore.authorisation_public(ref))
        except (KeyError_, age.AgeError):
            auth_fp = None
        ts = sorted(str(r.get("ts")) for r in records)
        fields: dict[str, Any] = {
            "ref": ref,
            "segment": number,
            "file": seg.name,
            "principals": sorted({str(r["principal"]) for r in records if r.get("principal")}),
            "channels": sorted({str(r.get("channel")) for r in records}),
            "kinds": sorted({str(r.get("kind")) for r in records}),
            "first_ts": ts[0] if ts else None,
            "last_ts": ts[-1] if ts else None,
            "opened_at": None,
            "closed_at": format_utc(self.clock.now()),
            "records": len(records),
            "ciphertext_sha256": chain.sha256_file(seg),
            "ciphertext_bytes": size,
            "plaintext_bytes": None,
            "whole_chunks": max(0, (size - header_len) // (age.CHUNK + age.TAG))
            if header_len >= 0
            else 0,
            "index_sha256": chain.sha256_file(index)
            if index.exists()
            else hashlib.sha256().hexdigest(),
            "segment_key_fingerprint": None,
            "authorisation_key_fingerprint": auth_fp,
            "truncated": True,
            "truncated_reason": reason,
        }
        key_present = self.keystore.segment_key_path(ref, number).exists()
        digest, seq = chain.append(directory, self.key, fields)
        if self.audit is not None:
            self.audit.append(
                Action.SEGMENT_TRUNCATED,
                self.actor,
                refs=(ref,),
                **closing_fields(fields, digest, seq),
                records_indexed=len(records),
                reason=reason,
                segment_key_present=key_present,
            )
        return True

    def recover(
        self,
        root: Path,
        ref: str | None = None,
        *,
        trigger: str = "start",
        exclude: Container[str] = (),
    ) -> list[str]:
        """Seal every cut-off segment (of `ref`, or of every archive under `root`) as truncated;
        audit ARCHIVE_RECOVERED once per archive changed. Returns the segment ids sealed.
        Segment ids in `exclude` ("REF/NNNNNN": sealed on record, manifest since deleted) are
        left alone, so recovery never launders a deleted manifest."""
        sealed: list[str] = []
        if ref is not None:
            directories = [root / ref] if (root / ref).is_dir() else []
        elif root.is_dir():
            directories = sorted(p for p in root.iterdir() if p.is_dir())
        else:
            directories = []
        for directory in directories:
            done: list[str] = []
            with chain.archive_lock(directory):
                for number in segment_numbers(directory):
                    sid = f"{directory.name}/{number:06d}"
                    if sid not in exclude and self.seal_truncated(directory, number, CUT_OFF):
                        done.append(sid)
            if done and self.audit is not None:
                self.audit.append(
                    Action.ARCHIVE_RECOVERED,
                    self.actor,
                    refs=(directory.name,),
                    segments=done,
                    trigger=trigger,
                )
            sealed += done
        return sealed


def live_segments(directory: Path) -> list[int]:
    """Segments of one archive that a running writer holds (no manifest yet, flock taken)."""
    return [
        n
        for n in segment_numbers(directory)
        if not (directory / f"{n:06d}.manifest.json").exists()
        and is_live(directory / f"{n:06d}.age")
    ]


def read_index(path: Path) -> list[dict[str, Any]]:
    """Index lines; a torn last line (crash mid-write) is ignored."""
    records: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
        for line in fh:
            try:
                item = json.loads(line)
            except ValueError:
                break
            if isinstance(item, dict):
                records.append(item)
    return records

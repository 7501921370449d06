"""Verification of the audit log: chain, signatures, signed head, key chain, pins and witness.

Three kinds of finding, kept apart:

- problems: tampering or loss (an edit, deletion, reordering, truncation, an erased log, an entry
  signed by a key the chain does not reach, a head or witness that contradicts the log). `ok` is
  False; `lbm audit verify` exits 1.
- the unsigned tail: entries after the last signed head whose chain is intact, which a `kill -9`
  between writing a line and writing its head leaves behind. Shown, not a failure by itself; the
  next append or `lbm audit repair-head` re-signs the head.
- warnings: time that goes backwards, entries written under the fake clock, old-style key
  rotations, witness lines that are not this log's. Shown; `ok` stays True.

Keys. The first entry's signer starts the log; after that every entry must be signed by the
current key, which changes only with a `key_rotate` entry signed by the current key and naming the
next one (`new_public_key`). Old-style rotations (signed by the new key, before this rule) are
accepted with a warning. Without a pin this checks internal consistency only: whoever can write
keys/ and the log can re-sign all of it. With `pinned` keys (an allowed-signers file kept off the
box), some entry or the head must be signed by a pinned key, entries before it are covered by the
hash chain that signature commits to, and every key after it must be reached through signed
rotations. A `witness` (journal lines of earlier heads) catches rollbacks to an older log and head
and rewrites by someone holding the gateway's private key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from store import StoreError
from store.audit import GENESIS, Action, canonical, line_hash
from store.clock import parse_utc
from store.paths import DataPaths
from store.signing import fingerprint, load_public, verify

MAX_LISTED = 20  # warnings of one kind listed before "and N more"


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    head_seq: int | None = None
    unsigned_after_head: list[int] = field(default_factory=list)
    fake_clock_seqs: list[int] = field(default_factory=list)
    signers: list[str] = field(default_factory=list)
    witnessed: int = 0

    @property
    def first_problem(self) -> str | None:
        return self.problems[0] if self.problems else None


@dataclass
class _Epoch:
    start: int  # first seq signed by this key
    fp: str
    how: str  # "first", "rotated" (signed by the previous key), "legacy"


def _ranges(seqs: list[int]) -> str:
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(parts)


class _Verifier:
    def __init__(
        self, paths: DataPaths, keys: dict[str, Ed25519PublicKey], pinned: dict | None
    ) -> None:
        self.paths = paths
        self.known: dict[str, Ed25519PublicKey] = {**keys, **(pinned or {})}
        self.pinned = pinned
        self.result = VerifyResult(ok=True, entries=0)
        self.hashes: dict[int, str] = {}
        self.key_after: dict[int, str] = {}  # seq -> key that signs the next entry
        self.epochs: list[_Epoch] = []
        self.backwards: list[str] = []

    def bad(self, msg: str) -> None:
        self.result.ok = False
        self.result.problems.append(msg)

    # -- entries ---------------------------------------------------------------------------
    def entries(self) -> None:
        log = self.paths.audit_log
        data = log.read_bytes() if log.exists() else b""
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        prev, epoch, last_ts = GENESIS, None, None
        for number, raw in enumerate(lines, 1):
            where = f"{log}:{number}"
            try:
                entry = json.loads(raw)
                seq = entry["seq"]
                sig = entry.pop("sig")
                signer = str(entry.get("key"))
                fields = entry.get("fields") or {}
            except (ValueError, KeyError, TypeError, AttributeError):
                self.bad(f"{where}: not a valid audit entry")
                return
            if seq != number:
                self.bad(f"{where}: entry has seq {seq}, expected {number} (deleted or reordered)")
                return
            if entry.get("prev") != prev:
                self.bad(
                    f"{where}: seq {seq}: previous-hash mismatch (an earlier entry was edited, "
                    "deleted or reordered)"
                )
                return
            rotation = entry.get("action") == Action.KEY_ROTATE.value
            if epoch is None:
                self.epochs.append(_Epoch(seq, signer, "first"))
            elif signer != epoch:
                if not (
                    rotation
                    and "new_public_key" not in fields
                    and fields.get("old_fingerprint") == epoch
                    and fields.get("new_fingerprint") == signer
                ):
                    self.bad(
                        f"{where}: seq {seq}: signed by key {signer[:16]}, but the log's key at "
                        f"this point is {epoch[:16]} and no key_rotate entry signed by it "
                        "introduced that key"
                    )
                    return
                self.result.warnings.append(
                    f"seq {seq}: old-style key rotation to {signer[:16]}, not signed by the "
                    "previous key (a pin to an earlier key does not reach past it)"
                )
                self.epochs.append(_Epoch(seq, signer, "legacy"))
            epoch = signer
            if signer not in self.known:
                self.bad(f"{where}: seq {seq}: signed by unknown key {signer[:16]}")
                return
            if not verify(self.known, signer, canonical(entry), sig):
                self.bad(f"{where}: seq {seq}: bad signature (entry edited)")
                return
            if canonical({**entry, "sig": sig}) != raw:
                self.bad(f"{where}: seq {seq}: entry not in canonical form (edited)")
                return
            if rotation and "new_public_key" in fields:
                try:
                    new = load_public(str(fields["new_public_key"]), f"{where}: new_public_key")
                except StoreError as exc:
                    self.bad(str(exc))
                    return
                if fingerprint(new) != fields.get("new_fingerprint"):
                    self.bad(f"{where}: seq {seq}: new_fingerprint does not match new_public_key")
                    return
                epoch = fingerprint(new)
                self.known[epoch] = new
                self.epochs.append(_Epoch(seq + 1, epoch, "rotated"))
            last_ts = self._times(seq, entry, last_ts)
            prev = line_hash(raw)
            self.hashes[seq] = prev
            self.key_after[seq] = epoch
            self.result.entries = seq
        if torn:
            self.bad(
                f"{log}: last line is incomplete: {len(torn)} bytes after seq "
                f"{self.result.entries} (a write cut off by power loss or a full disk, or "
                "tampering)"
            )

    def _times(self, seq: int, entry: dict[str, Any], last_ts: Any) -> Any:
        if entry.get("fake_clock"):
            self.result.fake_clock_seqs.append(seq)
        try:
            ts = parse_utc(str(entry.get("ts")))
        except ValueError:
            self.backwards.append(f"seq {seq}: time {entry.get('ts')!r} is not a date-time")
            return last_ts
        if last_ts is not None and ts < last_ts:
            self.backwards.append(
                f"seq {seq}: time goes backwards ({entry.get('ts')} after "
                f"{last_ts.isoformat().replace('+00:00', 'Z')})"
            )
        return ts

    # -- head ----------------------------------------------------------------------------------
    def head(self, initialised: bool) -> dict[str, Any] | None:
        head_path, n = self.paths.audit_head, self.result.entries
        if n == 0:
            if head_path.exists():
                self.bad(f"{head_path}: a signed head exists but the log holds no entries (erased)")
            elif initialised:
                self.bad(
                    f"{self.paths.audit_log}: no entries and no signed head in an initialised "
                    "data directory: the log was erased (it must hold at least its init entry)"
                )
            return None
        if not head_path.exists():
            self.bad(f"{head_path}: signed head is missing")
            return None
        try:
            head = json.loads(head_path.read_bytes())
            hsig = head.pop("sig")
            h = head.get("seq")
        except (ValueError, KeyError, AttributeError):
            self.bad(f"{head_path}: not a valid signed head")
            return None
        self.result.head_seq = h if isinstance(h, int) else None
        if not isinstance(h, int) or not 0 < h <= n:
            self.bad(
                f"{head_path}: head says {h} entries, log has {n} (truncated or entries deleted "
                "at the end)"
            )
        elif head.get("hash") != self.hashes[h]:
            self.bad(f"{head_path}: head hash does not match entry {h}")
        elif head.get("key") != self.key_after[h]:
            self.bad(f"{head_path}: head signed by key {str(head.get('key'))[:16]}, not the log's")
        elif not verify(self.known, str(head.get("key")), canonical(head), hsig):
            self.bad(f"{head_path}: bad signature on head")
        elif h < n:
            self.result.unsigned_after_head = list(range(h + 1, n + 1))
            return head
        return head

    # -- pins and witness ------------------------------------------------------------------------
    def pins(self, head: dict[str, Any] | None, where: str) -> None:
        assert self.pinned is not None
        reached: set[str] = set()
        chain_reached = False
        for epoch in self.epochs:
            now = epoch.fp in self.pinned or (epoch.how == "rotated" and chain_reached)
            if chain_reached and not now:
                self.bad(
                    f"seq {epoch.start}: signed by key {epoch.fp[:16]}, which is not reached from "
                    f"the key(s) pinned in {where} by key_rotate entries signed by the previous key"
                )
                return
            chain_reached = now
            if now:
                reached.add(epoch.fp)
        signed = {e.fp for e in self.epochs if e.start <= self.result.entries}
        if head is not None:
            signed.add(str(head.get("key")))
        if self.result.entries and not reached & signed:
            self.bad(
                f"no entry and no head is signed by a key pinned in {where} (the log is signed "
                f"by {', '.join(sorted(fp[:16] for fp in signed))})"
            )

    def witness(self, path: Path) -> None:
        checked = 0
        for number, head in _witness_heads(path):
            hsig = head.pop("sig", "")
            seq = head.get("seq")
            if not isinstance(seq, int) or not verify(
                self.known, str(head.get("key")), canonical(head), str(hsig)
            ):
                self.result.warnings.append(
                    f"{path}:{number}: not a head signed by this log's keys (ignored)"
                )
                continue
            checked += 1
            if seq not in self.hashes:
                self.bad(
                    f"{path}: witnessed seq {seq} is missing from the log (rolled back to an "
                    "older log or truncated)"
                )
                return
            if self.hashes[seq] != head.get("hash"):
                self.bad(f"{path}: witnessed seq {seq} differs from the log (rewritten)")
                return
        self.result.witnessed = checked
        if checked == 0:
            self.bad(f"{path}: no head of this log found: nothing to check the log against")

    def summarise_warnings(self) -> None:
        r = self.result
        if r.unsigned_after_head:
            span = _ranges(r.unsigned_after_head)
            r.warnings.insert(
                0,
                f"seq {span}: appended after the last signed head (interrupted append; chain "
                "intact); the next append or `lbm audit repair-head` re-signs the head",
            )
        listed = self.backwards[:MAX_LISTED]
        if len(self.backwards) > MAX_LISTED:
            listed.append(f"... and {len(self.backwards) - MAX_LISTED} more entries out of order")
        r.warnings += listed
        if r.fake_clock_seqs:
            r.warnings.append(
                f"{len(r.fake_clock_seqs)} entries written under the fake clock "
                f"([testing] fake_clock; their times were set by hand): seq "
                f"{_ranges(r.fake_clock_seqs)}"
            )
        r.signers = [e.fp for e in self.epochs]


def _witness_heads(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Heads found in a witness file: journal lines or JSON lines containing a head object."""
    heads = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(obj, dict) and "seq" in obj and "hash" in obj:
            heads.append((number, obj))
    return heads


def verify_log(
    paths: DataPaths,
    keys: dict[str, Ed25519PublicKey],
    witness: Path | None = None,
    *,
    pinned: dict[str, Ed25519PublicKey] | None = None,
    pinned_from: str = "the allowed-signers file",
    require_init: bool = False,
) -> VerifyResult:
    """Check the log of `paths` (see the module docstring).

    `keys`: public keys to look signers up by (the data dir's; trusted only with no pin).
    `require_init`: the log must start with an `init` entry (`lbm audit verify` always asks);
    an empty log with no head fails whenever the data dir holds a gateway key or registry.
    """
    v = _Verifier(paths, keys, pinned)
    v.entries()
    initialised = require_init or any(
        p.exists() for p in (paths.signing_key, paths.signing_pub, paths.registry)
    )
    head = v.head(initialised) if v.result.ok else None
    if v.result.ok and require_init and v.result.entries:
        first = json.loads(paths.audit_log.read_bytes().split(b"\n", 1)[0])
        if first.get("action") != Action.INIT.value:
            v.bad(
                f"{paths.audit_log}:1: the log starts with {first.get('action')!r}, not init "
                "(the start of the log is missing or was replaced)"
            )
    if v.result.ok and pinned is not None:
        v.pins(head, pinned_from)
    if v.result.ok and witness is not None:
        v.witness(witness)
    v.summarise_warnings()
    return v.result

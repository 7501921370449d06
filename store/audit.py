"""The tamper-evident audit log: hash-chained JSON lines, each signed by the gateway key.

audit/audit.jsonl holds one entry per line. Each entry carries its sequence number, the UTC time
(the fake clock's, flagged, in tests), the action (one of `Action`), the actor, the references it
concerns, fields (identifiers, counts and hashes, never monitored content), the SHA-256 of the
previous line, the fingerprint of the key that signed it and an Ed25519 signature over the rest.
audit/head holds the signed (sequence, hash) of the last entry, so truncation is caught; each new
head is also sent to the system journal (`store.witness`) so that a collector off the box sees it.

Appends from any process take an exclusive lock on audit/lock. Before its own entry an append
writes what earlier appends left to record: `head_repaired` when a crash (`kill -9`) fell between
a line and its head, and `witness_failed` / `witness_restored` for journal outages. An append
refuses to run on a head that does not match the log (truncation or edits stay visible).
A key rotation is an entry signed by the previous key naming the new one (`rotate_key`), so
`store.audit_verify` can follow a chain of keys from one pinned off the box.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Any

from store import AuditError, StoreError, signing
from store import witness as witness_mod
from store.clock import Clock, format_utc
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.paths import DataPaths
from store.signing import GatewayKey

GENESIS = "0" * 64


class Action(StrEnum):
    """Every audited action; `lbm report` counts by these names."""

    INIT = "init"
    CONFIG_CHANGE = "config_change"
    AUTH_GRANT = "auth_grant"
    AUTH_URGENT = "auth_urgent"
    AUTH_RATIFY = "auth_ratify"
    AUTH_RENEW = "auth_renew"
    AUTH_REVIEW = "auth_review"
    AUTH_CANCEL = "auth_cancel"
    AUTH_EXPIRED = "auth_expired"
    AUTH_ASSIGN = "auth_assign"
    AUTH_REFUSED = "auth_refused"
    AUTH_VIEW = "auth_view"
    IDENTITY_IMPORT = "identity_import"
    IDENTITY_CHANGE = "identity_change"
    KEY_CREATE = "key_create"
    KEY_ROTATE = "key_rotate"
    KEY_REWRAP = "key_rewrap"
    KEY_DESTROY = "key_destroy"
    INVESTIGATOR_ADD = "investigator_add"
    INVESTIGATOR_REMOVE = "investigator_remove"
    DEV_IDENTITY = "dev_identity"
    SEGMENT_CLOSE = "segment_close"
    CAPTURE_GAP = "capture_gap"
    SEGMENT_TRUNCATED = "segment_truncated"
    SEARCH = "search"
    VIEW = "view"
    EXPORT = "export"
    COLLATERAL_PROPOSE = "collateral_propose"
    COLLATERAL_APPROVE = "collateral_approve"
    PURGE = "purge"
    RETENTION_REVIEW = "retention_review"
    EVIDENCE_HOLD = "evidence_hold"
    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    DSN_DROPPED = "dsn_dropped"
    # evidence integrity (issue 12)
    METADATA_GAP = "metadata_gap"
    WITNESS_FAILED = "witness_failed"
    WITNESS_RESTORED = "witness_restored"
    HEAD_REPAIRED = "head_repaired"
    ARCHIVE_RECOVERED = "archive_recovered"
    # authorisation hardening (issue 13)
    OFFICER_ADD = "officer_add"
    OFFICER_END = "officer_end"
    OFFICER_KEY = "officer_key"
    POLICY_RESTORED = "policy_restored"  # a daemon's policy snapshot is fresh again (fail closed)
    # mail delivery (issue 15)
    SPOOL_QUARANTINE = "spool_quarantine"  # a broken spool entry moved aside at start
    SPOOL_REMOVE = "spool_remove"  # an operator removed a spooled message (lbm smtp queue remove)
    SPOOL_DUPLICATES = "spool_duplicates"  # entries found mid-delivery at start (may arrive twice)
    # web identity (issue 14)
    USERS_CHANGE = "users_change"  # lbm users add/remove: user name and change, never the hash
    # investigators and scrutiny (issue 16)
    SEARCH_REFUSED = "search_refused"  # a person-level search without ref, reason or access
    BUNDLE = "bundle"  # lbm archive bundle wrote a ciphertext evidence bundle (its hash)
    EXPORT_REFUSED = "export_refused"  # a bundle or export refused (no access, gateway decrypt off)
    EVIDENCE_RELEASE = "evidence_release"  # an evidence hold released (lbm archive release)
    COLLATERAL_REFUSED = "collateral_refused"  # self-approval, unknown proposal or record
    RETENTION_RUN = "retention_run"  # lbm retention run (what was due; applied or dry run)
    REPORT = "report"  # lbm report produced (period and format; counts only)
    RETENTION_REFUSED = "retention_refused"  # a hold, release or review refused (no access...)
    # deployment (issue 17)
    GATEWAY_RULES_APPLY = "gateway_rules_apply"
    GATEWAY_RULES_REMOVE = "gateway_rules_remove"
    STATUS_OFFICER_VIEW = "status_officer_view"  # lbm status --officer-view (refs shown)
    CONFIG_RELOAD = "config_reload"  # a daemon reloaded config, users file and identity on SIGHUP
    # archives on object storage (issue 19)
    ARCHIVE_UPLOAD = "archive_upload"  # a sealed segment uploaded, read back, local copy removed
    ARCHIVE_UPLOAD_CONFLICT = "archive_upload_conflict"  # an object exists with other content


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class AuditLog:
    """Append to and read the audit log of one data directory."""

    def __init__(
        self,
        paths: DataPaths,
        key: GatewayKey | None,
        clock: Clock,
        *,
        witness: bool = True,
        witness_socket: str = witness_mod.DEFAULT_SOCKET,
    ) -> None:
        self.paths = paths
        self.key = key
        self.clock = clock
        self.witness = witness
        self.witness_socket = witness_socket

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self.key is None:
            raise AuditError("audit log opened read-only (no gateway key)")
        ensure_dir(self.paths.audit_dir)
        with open(self.paths.audit_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _last(self) -> tuple[int, str, dict[str, Any]]:
        """(seq, hash, entry) of the last complete line; a torn final line is an error."""
        path = self.paths.audit_log
        if not path.exists() or path.stat().st_size == 0:
            return 0, GENESIS, {}
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = max(0, size - 65536)
            while True:
                fh.seek(pos)
                tail = fh.read()
                if not tail.endswith(b"\n"):
                    raise AuditError(
                        f"{path}: last line is incomplete (a cut-off write); appends stop until "
                        "it is dealt with: see `lbm audit verify` and `lbm audit repair-head`"
                    )
                lines = tail.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    last = lines[-1]
                    break
                pos = max(0, pos - 65536 * 4)
        try:
            entry = json.loads(last)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{path}: last line is not an audit entry") from exc
        return seq, line_hash(last), entry

    def _sync_key(self, last: dict[str, Any]) -> GatewayKey:
        """The key the log expects next; reloads it after another process rotated it."""
        assert self.key is not None
        expected = current_key_after(last)
        if expected is None or expected == self.key.fingerprint:
            return self.key
        disk = signing.load(self.paths)
        if disk.fingerprint != expected:
            try:  # a rotation whose entry is written but whose key was not yet installed
                disk = signing.install_next(self.paths, "", expect_fp=expected)
            except StoreError:
                raise AuditError(
                    f"{self.paths.signing_key}: key {disk.fingerprint[:16]} is not the audit "
                    f"log's signing key {expected[:16]} (keys/ changed outside `lbm keys "
                    "rotate-signing`?); run `lbm audit verify`"
                ) from None
        self.key = disk
        return disk

    def _head_behind(self, seq: int, last_hash: str) -> int | None:
        """None when the signed head covers the log; the head's seq when an append was cut off
        between line and head (the chain after it intact). Anything else is refused."""
        head_path = self.paths.audit_head
        if seq == 0:
            if head_path.exists():
                raise AuditError(
                    f"{head_path}: a signed head exists but the log is empty (erased?)"
                )
            return None
        try:
            head = json.loads(head_path.read_bytes())
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            raise AuditError(
                f"{head_path}: signed head is missing; run `lbm audit verify`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{head_path}: not a valid signed head") from exc
        if head_seq == seq and head_hash == last_hash:
            return None
        if 0 < head_seq < seq and chain_links(self.paths.audit_log, head_seq, head_hash):
            return head_seq
        raise AuditError(
            f"{head_path}: signed head (seq {head_seq}) does not match {self.paths.audit_log} "
            f"(seq {seq}): truncated or edited; appends stop, run `lbm audit verify`"
        )

    def _write(
        self, seq: int, prev: str, key: GatewayKey, action: Action, actor: str,
        refs: Iterable[str], fields: dict[str, Any],
    ) -> tuple[dict[str, Any], str]:  # fmt: skip
        entry: dict[str, Any] = {
            "seq": seq,
            "ts": format_utc(self.clock.now()),
            "action": action.value,
            "actor": actor,
            "refs": sorted(set(refs)),
            "fields": _json_safe(fields),
            "prev": prev,
            "key": key.fingerprint,
        }
        if self.clock.is_fake:
            entry["fake_clock"] = True
        entry["sig"] = key.sign(canonical(entry))
        line = canonical(entry)
        fd = os.open(self.paths.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if seq == 1:
            fsync_dir(self.paths.audit_dir)
        return entry, line_hash(line)

    def _pending(self, actor: str, seq: int, prev: str, key: GatewayKey) -> tuple[int, str]:
        """Write what earlier appends left to record: a head to re-sign, witness outages."""
        head_seq = self._head_behind(seq, prev)
        if head_seq is not None:
            gap = {"head_seq": head_seq, "log_seq": seq, "unsigned_entries": seq - head_seq}
            _, prev = self._write(seq + 1, prev, key, Action.HEAD_REPAIRED, actor, (), gap)
            seq += 1
        if not self.witness:
            return seq, prev
        state = witness_mod.load_state(self.paths.audit_dir)
        due = state.entries_due()
        for action, fields in due:
            fields["socket"] = self.witness_socket
            _, prev = self._write(seq + 1, prev, key, Action(action), "lbm-audit", (), fields)
            seq += 1
        if due:
            witness_mod.save_state(self.paths.audit_dir, state)
        return seq, prev

    def _finish(self, seq: int, prev: str, key: GatewayKey) -> None:
        """Sign and write the head for entry `seq`, then send it to the witness."""
        head: dict[str, Any] = {
            "seq": seq,
            "hash": prev,
            "ts": format_utc(self.clock.now()),
            "key": key.fingerprint,
        }
        head["sig"] = key.sign(canonical(head))
        atomic_write(self.paths.audit_head, canonical(head) + b"\n", mode=0o600)
        if not self.witness:
            return
        error = witness_mod.send(self.witness_socket, b"head " + canonical(head))
        state = witness_mod.load_state(self.paths.audit_dir)
        if error is None:
            if state.last_ok is not None and not state.failing:
                return  # nothing new to remember: no write on the common path
            state.succeeded(head["ts"])
        else:
            state.failed(head["ts"], seq, error)
        with suppress(OSError):  # the head is written; `lbm status` shows a stale count
            witness_mod.save_state(self.paths.audit_dir, state)

    def append(
        self, action: Action | str, actor: str, refs: Iterable[str] = (), **fields: Any
    ) -> dict[str, Any]:
        action = Action(action)
        with self._locked():
            seq, prev, last = self._last()
            key = self._sync_key(last)
            seq, prev = self._pending(actor, seq, prev, key)
            entry, prev = self._write(seq + 1, prev, key, action, actor, refs, fields)
            self._finish(seq + 1, prev, key)
        return entry

    def rotate_key(self, actor: str, comment: str) -> tuple[str, str]:
        """Rotate the gateway key: a `key_rotate` entry naming the new key, signed by the old.

        Returns (old fingerprint, new fingerprint). The head after it is signed by the new key.
        """
        with self._locked():
            seq, prev, last = self._last()
            old = self._sync_key(last)
            seq, prev = self._pending(actor, seq, prev, old)
            private = signing.stage_next(self.paths)
            new_fp = signing.fingerprint(private.public_key())
            fields = {
                "old_fingerprint": old.fingerprint,
                "new_fingerprint": new_fp,
                "new_public_key": signing.public_openssh(private.public_key()),
            }
            _, prev = self._write(seq + 1, prev, old, Action.KEY_ROTATE, actor, (), fields)
            new = signing.install_next(self.paths, comment, expect_fp=new_fp)
            self.key = new
            self._finish(seq + 1, prev, new)
        return old.fingerprint, new_fp

    def repair_head(self, actor: str) -> int | None:
        """Re-sign a head left one append behind (audited); the new head seq, or None."""
        with self._locked():
            seq, prev, last = self._last()
            key = self._sync_key(last)
            if self._head_behind(seq, prev) is None:
                return None
            seq, prev = self._pending(actor, seq, prev, key)
            self._finish(seq, prev, key)
        return seq

    # -- reading -------------------------------------------------------------------------
    def entries(self) -> Iterator[dict[str, Any]]:
        path = self.paths.audit_log
        if not path.exists():
            return
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise AuditError(f"{path}:{number}: not a JSON audit entry") from exc


def current_key_after(entry: dict[str, Any]) -> str | None:
    """Fingerprint of the key that signs the entry after `entry` (a rotation names its own)."""
    if not entry:
        return None
    fields = entry.get("fields") or {}
    if entry.get("action") == Action.KEY_ROTATE.value and "new_public_key" in fields:
        return str(fields.get("new_fingerprint"))
    return str(entry.get("key"))


def chain_links(log: Path, from_seq: int, from_hash: str) -> bool:
    """True when entry `from_seq` hashes to `from_hash` and every later entry chains to it."""
    prev = None
    for number, raw in enumerate(log.read_bytes().split(b"\n")[:-1], 1):
        if number == from_seq:
            if line_hash(raw) != from_hash:
                return False
            prev = from_hash
        elif prev is not None:
            try:
                if json.loads(raw).get("prev") != prev:
                    return False
            except (ValueError, AttributeError):
                return False
            prev = line_hash(raw)
    return prev is not None

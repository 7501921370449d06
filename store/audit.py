"""The tamper-evident audit log: hash-chained JSON lines, each signed by the gateway key.

audit/audit.jsonl holds one entry per line. Each entry carries its sequence number, the UTC time
(the fake clock's, flagged, in tests), the action (one of `Action`), the actor, the references it
concerns, fields (identifiers, counts and hashes, never monitored content), the SHA-256 of the
previous line and an Ed25519 signature by the gateway key over the rest of the entry.
audit/head holds the signed (sequence, hash) of the last entry, so truncation is caught; each new
head is also sent to the system journal (syslog) so that a collector off the box witnesses it.

Appends from any process take an exclusive lock on audit/lock. `verify()` reports the first bad
entry for any edit, deletion, reordering or truncation.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from store import AuditError
from store.clock import Clock, format_utc
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.paths import DataPaths
from store.signing import GatewayKey, verify

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


def current_actor() -> str:
    """The login user (/proc/self/loginuid), else the process's user. Env vars are not trusted."""
    uid: int | None = None
    try:
        raw = Path("/proc/self/loginuid").read_text().strip()
        value = int(raw)
        if value != 4294967295:  # (uid_t)-1: no login session
            uid = value
    except (OSError, ValueError):
        uid = None
    if uid is None:
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


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


def _witness(head: dict[str, Any]) -> None:
    try:
        import syslog

        syslog.openlog("lbm-audit", 0, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_NOTICE, "head " + canonical(head).decode())
    except Exception:  # the witness is best effort; the signed head on disk is authoritative
        pass


class AuditLog:
    """Append to and read the audit log of one data directory."""

    def __init__(
        self, paths: DataPaths, key: GatewayKey | None, clock: Clock, *, witness: bool = True
    ) -> None:
        self.paths = paths
        self.key = key
        self.clock = clock
        self.witness = witness

    # -- writing -------------------------------------------------------------------------
    def _last(self) -> tuple[int, str]:
        """(seq, hash) of the last complete line; a torn final line is an error."""
        path = self.paths.audit_log
        if not path.exists() or path.stat().st_size == 0:
            return 0, GENESIS
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = max(0, size - 65536)
            while True:
                fh.seek(pos)
                tail = fh.read()
                if not tail.endswith(b"\n"):
                    raise AuditError(f"{path}: last line is incomplete; run `lbm audit verify`")
                lines = tail.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    last = lines[-1]
                    break
                pos = max(0, pos - 65536 * 4)
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{path}: last line is not an audit entry") from exc
        return seq, line_hash(last)

    def append(
        self, action: Action | str, actor: str, refs: Iterable[str] = (), **fields: Any
    ) -> dict[str, Any]:
        if self.key is None:
            raise AuditError("audit log opened read-only (no gateway key)")
        action = Action(action)
        ensure_dir(self.paths.audit_dir)
        lock_path = self.paths.audit_dir / "lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seq, prev = self._last()
            entry: dict[str, Any] = {
                "seq": seq + 1,
                "ts": format_utc(self.clock.now()),
                "action": action.value,
                "actor": actor,
                "refs": sorted(set(refs)),
                "fields": _json_safe(fields),
                "prev": prev,
                "key": self.key.fingerprint,
            }
            if self.clock.is_fake:
                entry["fake_clock"] = True
            entry["sig"] = self.key.sign(canonical(entry))
            line = canonical(entry)
            fd = os.open(self.paths.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if seq == 0:
                fsync_dir(self.paths.audit_dir)
            head = {
                "seq": entry["seq"],
                "hash": line_hash(line),
                "ts": entry["ts"],
                "key": self.key.fingerprint,
            }
            head["sig"] = self.key.sign(canonical(head))
            atomic_write(self.paths.audit_head, canonical(head) + b"\n", mode=0o600)
            if self.witness:
                _witness(head)
        return entry

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


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)
    head_seq: int | None = None

    @property
    def first_problem(self) -> str | None:
        return self.problems[0] if self.problems else None


def _witness_heads(path: Path) -> list[dict[str, Any]]:
    """Heads found in a witness file: journal lines or JSON lines containing a head object."""
    heads = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(obj, dict) and "seq" in obj and "hash" in obj:
            heads.append(obj)
    return heads


def verify_log(paths: DataPaths, keys: dict[str, Any], witness: Path | None = None) -> VerifyResult:
    """Check every entry's chain and signature, then the signed head and an optional witness."""
    log = paths.audit_log
    result = VerifyResult(ok=True, entries=0)

    def bad(msg: str) -> None:
        result.ok = False
        result.problems.append(msg)

    prev = GENESIS
    hashes: dict[int, str] = {}
    if log.exists():
        with log.open("rb") as fh:
            data = fh.read()
        if data and not data.endswith(b"\n"):
            bad(f"{log}: last line is incomplete (truncated write or tampering)")
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw:
                continue
            where = f"{log}:{number}"
            try:
                entry = json.loads(raw)
                seq = entry["seq"]
                sig = entry.pop("sig")
            except (ValueError, KeyError, TypeError, AttributeError):
                bad(f"{where}: not a valid audit entry")
                break
            if seq != number:
                bad(f"{where}: entry has seq {seq}, expected {number} (deleted or reordered)")
                break
            if entry.get("prev") != prev:
                bad(
                    f"{where}: seq {seq}: previous-hash mismatch (an earlier entry was edited, "
                    "deleted or reordered)"
                )
                break
            if not verify(keys, str(entry.get("key")), canonical(entry), sig):
                bad(f"{where}: seq {seq}: bad signature (entry edited)")
                break
            if canonical({**entry, "sig": sig}) != raw:
                bad(f"{where}: seq {seq}: entry not in canonical form (edited)")
                break
            prev = line_hash(raw)
            hashes[seq] = prev
            result.entries = seq
    head_path = paths.audit_head
    if result.ok:
        if not head_path.exists():
            if result.entries:
                bad(f"{head_path}: signed head is missing")
        else:
            try:
                head = json.loads(head_path.read_bytes())
                hsig = head.pop("sig")
            except (ValueError, KeyError, AttributeError):
                bad(f"{head_path}: not a valid signed head")
            else:
                result.head_seq = head.get("seq")
                if not verify(keys, str(head.get("key")), canonical(head), hsig):
                    bad(f"{head_path}: bad signature on head")
                elif head.get("seq") != result.entries:
                    bad(
                        f"{head_path}: head says {head.get('seq')} entries, log has "
                        f"{result.entries} (truncated or entries deleted at the end)"
                    )
                elif head.get("hash") != prev:
                    bad(f"{head_path}: head hash does not match the last entry")
    if witness is not None:
        for head in _witness_heads(witness):
            seq = head.get("seq")
            if not isinstance(seq, int):
                continue
            if seq not in hashes:
                bad(f"{witness}: witnessed seq {seq} is missing from the log (truncated)")
                break
            if hashes[seq] != head.get("hash"):
                bad(f"{witness}: witnessed seq {seq} differs from the log (rewritten)")
                break
    return result

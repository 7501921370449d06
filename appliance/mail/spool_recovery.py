"""The mail spool at start-up (`Spool.load`): every committed entry checked against its
envelope (length and SHA-256), broken ones quarantined (moved aside, audited
`spool_quarantine`, reported by id and reason only, never delivered), uncommitted leftovers
removed (never answered `250`: the client still holds them), and the entries found
mid-delivery counted as possible duplicates. The layout is described in `spool`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.mail.envelope import ID_RE, Envelope, SpoolError, new_id
from store.audit import Action
from store.fsutil import ensure_dir, fsync_dir

if TYPE_CHECKING:
    from appliance.mail.spool import Spool


@dataclass
class LoadReport:
    entries: list[Envelope]
    quarantined: list[tuple[str, str]]  # (id or file name, reason)
    uncommitted: int  # leftovers of accepts that never committed (removed)
    possible_duplicates: int  # entries found mid-delivery (upstream may already have them)


def check(spool: Spool, spool_id: str) -> Envelope:
    """Read and verify one committed entry; raises SpoolError with the reason."""
    env = spool.read_envelope(spool_id)
    if env.id != spool_id:
        raise SpoolError("envelope id does not match its file name")
    try:
        data = spool.msg_path(spool_id).read_bytes()
    except FileNotFoundError:
        raise SpoolError("message file missing") from None
    except OSError as exc:
        raise SpoolError(f"message unreadable ({exc.strerror})") from None
    if len(data) != env.msg_len:
        raise SpoolError(f"message is {len(data)} bytes, envelope says {env.msg_len}")
    if hashlib.sha256(data).hexdigest() != env.msg_sha256:
        raise SpoolError("message does not match its SHA-256")
    return env


def load(spool: Spool) -> LoadReport:
    """Every complete entry, oldest first; broken committed entries quarantined (audited,
    reported on stderr by id and reason only); uncommitted leftovers removed."""
    entries: list[Envelope] = []
    quarantined: list[tuple[str, str]] = []
    committed = set(spool.ids())
    uncommitted = 0
    for path in sorted(spool.directory.iterdir()):
        name = path.name
        if not path.is_file() or name == "lock":
            continue
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # an envelope write that never committed
            continue
        if name.endswith(".msg") and name[:-4] in committed:
            continue
        if name.endswith(".json") and name[:-5] in committed:
            continue
        if name.endswith(".dlv") and ID_RE.fullmatch(name[:-4]):
            if name[:-4] not in committed:
                path.unlink(missing_ok=True)
            continue
        if name.endswith(".msg") and ID_RE.fullmatch(name[:-4]):
            path.unlink(missing_ok=True)  # never answered 250: see the module docstring
            uncommitted += 1
            continue
        quarantined.append((name, "not a spool file"))
        _quarantine_file(spool, path)
    for spool_id in sorted(committed):
        try:
            env = check(spool, spool_id)
            env.delivering = spool.dlv_path(spool_id).exists()
            entries.append(env)
        except SpoolError as exc:
            quarantined.append((spool_id, str(exc)))
            quarantine(spool, spool_id, str(exc))
    if uncommitted:
        fsync_dir(spool.directory)
    # a marker on an entry with nothing pending is a finished delivery (no duplicate)
    duplicates = sum(1 for env in entries if env.delivering and env.pending)
    return LoadReport(entries, quarantined, uncommitted, duplicates)


def _quarantine_file(spool: Spool, path: Path) -> None:
    ensure_dir(spool.quarantine_dir)
    target = spool.quarantine_dir / path.name
    if target.exists():
        target = spool.quarantine_dir / f"{path.name}.{new_id()}"
    os.replace(path, target)


def quarantine(spool: Spool, spool_id: str, reason: str) -> None:
    """Move an entry aside (never delivered), audit `spool_quarantine`, say so on stderr."""
    spool.clear_delivering(spool_id)
    for path in (spool.env_path(spool_id), spool.msg_path(spool_id)):
        if path.exists():
            _quarantine_file(spool, path)
    fsync_dir(spool.directory)
    if spool.quarantine_dir.exists():
        fsync_dir(spool.quarantine_dir)
    print(f"lbm smtp: spool entry {spool_id} quarantined: {reason}", file=sys.stderr)
    if spool.audit is not None:
        spool.audit.append(Action.SPOOL_QUARANTINE, spool.actor, spool_id=spool_id, reason=reason)

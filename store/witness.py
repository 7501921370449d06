"""The off-box witness of the audit log: every new signed head goes to the system journal.

Python's `syslog` module cannot report that a message was lost, so the head is written straight
to the journal's syslog socket (`/dev/log`, `[audit] witness_socket`) as one datagram, without
blocking. A failure (no socket, nobody listening, a full queue) is never silent: it is counted in
`audit/witness.json`, shown by `lbm status`, and each outage becomes one `witness_failed` audit
entry, closed by one `witness_restored` entry when a head gets through again. Those entries are
written by the next append (before its own entry), so the state they describe is known whole.

What a collector off the box keeps of these lines is what `lbm audit verify --witness FILE` checks
the log against: a rollback to an older log and head, or a rewrite by someone holding the gateway
key, contradicts a head the journal already saw.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from store.fsutil import atomic_write

DEFAULT_SOCKET = "/dev/log"
TAG = "lbm-audit"
PRIORITY = 10 * 8 + 5  # facility authpriv (10), severity notice (5)
STATE_FILE = "witness.json"


def send(socket_path: str, message: bytes) -> str | None:
    """Send one syslog line to `socket_path`; None when it was accepted, else why it was not.

    Non-blocking: a journal that does not keep up is a failure (EAGAIN), not a stalled append.
    """
    data = f"<{PRIORITY}>{TAG}[{os.getpid()}]: ".encode() + message
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.setblocking(False)
            sock.connect(socket_path)
            payload = data if kind == socket.SOCK_DGRAM else data + b"\n"
            if sock.send(payload) != len(payload):
                return f"short write to {socket_path}"
            return None
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE and kind == socket.SOCK_DGRAM:
                continue  # an old-style stream /dev/log
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return f"{name} {socket_path}"
        finally:
            sock.close()
    return f"EPROTOTYPE {socket_path}"  # pragma: no cover - both kinds refused


@dataclass
class WitnessState:
    """What audit/witness.json remembers: totals, the open outage, outages not yet audited."""

    failures_total: int = 0
    last_ok: str | None = None
    outage_since: str | None = None
    outage_first_seq: int | None = None
    outage_failures: int = 0
    outage_error: str | None = None
    outage_logged: bool = False
    unlogged_restores: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        return self.outage_since is not None

    def failed(self, now: str, seq: int, error: str) -> None:
        self.failures_total += 1
        if self.outage_since is None:
            self.outage_since, self.outage_first_seq = now, seq
            self.outage_failures, self.outage_logged = 0, False
        self.outage_failures += 1
        self.outage_error = error

    def succeeded(self, now: str) -> bool:
        """Record a head that got through; True when that ends an outage."""
        self.last_ok = now
        if self.outage_since is None:
            return False
        self.unlogged_restores.append(
            {
                "since": self.outage_since,
                "first_unwitnessed_seq": self.outage_first_seq,
                "failures": self.outage_failures,
                "error": self.outage_error,
                "restored": now,
                "failure_logged": self.outage_logged,
            }
        )
        self.outage_since = self.outage_first_seq = self.outage_error = None
        self.outage_failures, self.outage_logged = 0, False
        return True

    def entries_due(self) -> list[tuple[str, dict[str, Any]]]:
        """The audit entries (action, fields) this state owes the log; marks them written."""
        due: list[tuple[str, dict[str, Any]]] = []
        for outage in self.unlogged_restores:
            if not outage.pop("failure_logged", True):
                due.append(("witness_failed", _failed_fields(outage)))
            due.append(("witness_restored", outage))
        if self.failing and not self.outage_logged:
            current = {
                "since": self.outage_since,
                "first_unwitnessed_seq": self.outage_first_seq,
                "failures": self.outage_failures,
                "error": self.outage_error,
            }
            due.append(("witness_failed", current))
        self.unlogged_restores = []
        self.outage_logged = self.failing
        return due


def _failed_fields(outage: dict[str, Any]) -> dict[str, Any]:
    keep = ("since", "first_unwitnessed_seq", "failures", "error")
    return {k: outage.get(k) for k in keep}


def state_path(audit_dir: Path) -> Path:
    return audit_dir / STATE_FILE


def load_state(audit_dir: Path) -> WitnessState:
    """The saved state; a missing or damaged file starts afresh (the audit entries stay)."""
    path = state_path(audit_dir)
    try:
        raw = json.loads(path.read_bytes())
        known = {k: raw[k] for k in WitnessState.__dataclass_fields__ if k in raw}
        return WitnessState(**known)
    except (OSError, ValueError, TypeError):
        return WitnessState()


def save_state(audit_dir: Path, state: WitnessState) -> None:
    data = json.dumps(asdict(state), sort_keys=True).encode() + b"\n"
    atomic_write(state_path(audit_dir), data, mode=0o600)

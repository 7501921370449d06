"""A daemon's readiness: `run/NAME.ready` holds its pid (written atomically, 0600, once it
serves; the daemon removes it on exit), and systemd is told READY=1 when NOTIFY_SOCKET is set.
`lbm run` and `lbm status` read the file; the proxy, the relay and live capture all announce
themselves through `announce_ready`."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from store.fsutil import atomic_write


def notify_systemd(message: bytes = b"READY=1") -> None:
    """sd_notify without libsystemd: one datagram to NOTIFY_SOCKET (abstract names start
    with '@'); nothing when not under systemd, and a failed send is ignored."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(message, addr)


def announce_ready(run_dir: Path, name: str) -> Path:
    """Write `run_dir/NAME.ready` (our pid) and tell systemd; returns the file's path."""
    ready = run_dir / f"{name}.ready"
    atomic_write(ready, f"{os.getpid()}\n".encode(), mode=0o600)
    notify_systemd()
    return ready

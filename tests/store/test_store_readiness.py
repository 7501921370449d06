"""Readiness: `run/NAME.ready` holds the pid (0600) and systemd gets READY=1 on NOTIFY_SOCKET,
a path or an abstract ('@') name; without NOTIFY_SOCKET nothing is sent."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from store.readiness import announce_ready


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_announce_ready_writes_the_pid_and_notifies_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    name = f"lbm-test-{os.getpid()}-{tmp_path.name}"
    addr = "\0" + name if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind(addr)
        sd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else addr)
        ready = announce_ready(tmp_path, "proxy")
        assert sd.recv(64) == b"READY=1"
    assert ready == tmp_path / "proxy.ready"
    assert ready.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(ready.stat().st_mode) == 0o600


def test_without_notify_socket_only_the_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert announce_ready(tmp_path, "smtp").read_text() == f"{os.getpid()}\n"

"""`swaks` (Debian's SMTP test client) through `lbm smtp run`: plain, STARTTLS (`--tls`), AUTH
after TLS, PIPELINING (`--pipeline`); AUTH without TLS refused; Postfix `smtp-sink` as the
upstream where installed.

The relay's Received field tells what the session was (RFC 3848: ESMTP, ESMTPS with TLS,
ESMTPSA with TLS and AUTH); the upstream receives the message swaks sent, byte for byte
(swaks stuffs the leading dot, the relay unstuffs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mail_relay import OTHER_ADDR, OUTSIDE_ADDR, Relay, set_option, wait_until
from smtp_upstream import split_received

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks not installed (Debian package swaks)")

MESSAGE = (
    b"From: <other@force.example>\r\nTo: <someone@elsewhere.example>\r\n"
    b"Subject: swaks test\r\nMessage-ID: <swaks-1@force.example>\r\n\r\n"
    b"line one\r\n.a line that starts with a dot\r\nlast line\r\n"
)


def swaks(relay: Relay, tmp_path: Path, *extra: str, sender: str = OTHER_ADDR,
          data: bytes = MESSAGE) -> subprocess.CompletedProcess[str]:  # fmt: skip
    msg = tmp_path / "message.eml"
    msg.write_bytes(data)
    argv = [str(SWAKS), "--server", relay.host, "--port", str(relay.port), "--from", sender,
            "--to", OUTSIDE_ADDR, "--helo", "swaks.test", "--data", f"@{msg}", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _received(relay: Relay, n: int) -> tuple[bytes, bytes]:
    msgs = relay.upstream.wait_for(n, timeout=30)
    return split_received(msgs[n - 1].content)


def test_plain(relay: Relay, tmp_path: Path) -> None:
    done = swaks(relay, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    received, rest = _received(relay, 1)
    assert rest == MESSAGE
    assert re.search(rb"with ESMTP\b", received), received


def test_starttls(relay: Relay, tmp_path: Path) -> None:
    done = swaks(relay, tmp_path, "--tls")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STARTTLS" in done.stdout and "TLS started" in done.stdout, done.stdout
    received, rest = _received(relay, 1)
    assert rest == MESSAGE
    assert re.search(rb"with ESMTPS\b", received), received


def test_pipelining_is_offered_and_used(relay: Relay, tmp_path: Path) -> None:
    done = swaks(relay, tmp_path, "--pipeline")
    assert done.returncode == 0, done.stdout + done.stderr
    sent = [ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith(" -> ")]
    # pipelined: MAIL, RCPT and DATA go out before any of their replies is read
    lines = [ln[:4] for ln in done.stdout.splitlines() if ln[:4] in (" -> ", "<-  ", " <- ")]
    at = sent.index("MAIL")
    assert sent[at : at + 3] == ["MAIL", "RCPT", "DATA"], done.stdout
    first_out = next(i for i, ln in enumerate(done.stdout.splitlines()) if "-> MAIL" in ln)
    assert "-> RCPT" in done.stdout.splitlines()[first_out + 1], done.stdout
    assert "PIPELINING" in done.stdout
    assert lines
    assert _received(relay, 1)[1] == MESSAGE


def test_auth_without_tls_is_refused(relay: Relay, tmp_path: Path) -> None:
    done = swaks(relay, tmp_path, "--auth", "PLAIN", "--auth-user", "x", "--auth-password", "y")
    assert done.returncode != 0
    time.sleep(0.5)
    assert relay.upstream.messages == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sink_count(out: Path) -> int:
    found = re.findall(rb"mesg=(\d+)", out.read_bytes()) if out.exists() else []
    return int(found[-1]) if found else 0


@pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="Postfix smtp-sink not installed")
def test_postfix_smtp_sink_as_the_upstream(
    relay_factory: Callable[[], Relay], tmp_path: Path
) -> None:
    port = _free_port()
    out = tmp_path / "sink.out"
    argv = ["smtp-sink", "-c", *(["-u", "nobody"] if os.geteuid() == 0 else [])]
    with out.open("wb") as fh:
        sink = subprocess.Popen([*argv, f"127.0.0.1:{port}", "64"], stdout=fh)
    try:
        relay = relay_factory()
        set_option(relay.data_dir, "smtp", "upstream_port", str(port))
        relay.start()
        for _ in range(5):
            done = swaks(relay, tmp_path, "--pipeline")
            assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: _sink_count(out) >= 5, 30, "smtp-sink to receive 5 messages")
        relay.wait_drained()
        assert relay.stop() == 0
        assert _sink_count(out) == 5
    finally:
        sink.terminate()
        sink.wait()

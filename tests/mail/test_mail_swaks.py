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

import bcrypt
import pytest
from mail_relay import OTHER_ADDR, OUTSIDE_ADDR, SMTP_USER, Relay, set_option, wait_until
from smtp_upstream import RawClient, split_received

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks not installed (Debian package swaks)")
SSLEAY = bool(shutil.which("perl")) and (
    subprocess.run(["perl", "-MNet::SSLeay", "-e1"], capture_output=True).returncode == 0
)
needs_tls = pytest.mark.skipif(
    not SSLEAY, reason="swaks --tls needs Net::SSLeay (Debian package libnet-ssleay-perl)"
)

MESSAGE = (
    b"From: <other@force.example>\r\nTo: <someone@elsewhere.example>\r\n"
    b"Subject: swaks test\r\nMessage-ID: <swaks-1@force.example>\r\n\r\n"
    b"line one\r\n.a line that starts with a dot\r\nlast line\r\n"
)


def swaks(relay: Relay, tmp_path: Path, *extra: str, sender: str = OTHER_ADDR,
          port: int | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    msg = tmp_path / "message.eml"
    msg.write_bytes(MESSAGE)
    argv = [str(SWAKS), "--server", relay.host, "--port", str(port or relay.port),
            "--from", sender, "--to", OUTSIDE_ADDR, "--helo", "swaks.test",
            "--data", f"@{msg}", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def swaks_sends(relay: Relay, tmp_path: Path) -> bytes:
    """What swaks delivers to a bare server for MESSAGE (it adds a CRLF before the final dot):
    sent straight to the upstream, then forgotten."""
    done = swaks(relay, tmp_path, port=relay.upstream.port)
    assert done.returncode == 0, done.stdout + done.stderr
    (msg,) = relay.upstream.wait_for(1)
    relay.upstream.clear()
    assert msg.content.startswith(MESSAGE)
    return msg.content


def _received(relay: Relay, n: int) -> tuple[bytes, bytes]:
    msgs = relay.upstream.wait_for(n, timeout=30)
    return split_received(msgs[n - 1].content)


def test_plain(shared_relay: Relay, tmp_path: Path) -> None:
    relay = shared_relay
    expected = swaks_sends(relay, tmp_path)
    done = swaks(relay, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    received, rest = _received(relay, 1)
    assert rest == expected
    assert re.search(rb"with ESMTP\b", received), received


@needs_tls
def test_starttls(shared_relay: Relay, tmp_path: Path) -> None:
    relay = shared_relay
    expected = swaks_sends(relay, tmp_path)
    done = swaks(relay, tmp_path, "--tls")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STARTTLS" in done.stdout and "TLS started" in done.stdout, done.stdout
    received, rest = _received(relay, 1)
    assert rest == expected
    assert re.search(rb"with ESMTPS\b", received), received


def test_pipelining_is_offered_and_used(shared_relay: Relay, tmp_path: Path) -> None:
    relay = shared_relay
    expected = swaks_sends(relay, tmp_path)  # the bare upstream offers no PIPELINING
    done = swaks(relay, tmp_path, "--pipeline")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  250-PIPELINING" in done.stdout, done.stdout
    lines = done.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(" -> MAIL FROM:"))
    # pipelined: MAIL, RCPT and DATA go out before any of their replies is read
    assert lines[at + 1].startswith(" -> RCPT TO:") and lines[at + 2] == " -> DATA", done.stdout
    assert [ln[:8] for ln in lines[at + 3 : at + 6]] == ["<-  250 ", "<-  250 ", "<-  354 "]
    assert _received(relay, 1)[1] == expected


@needs_tls
def test_auth_after_starttls(shared_relay: Relay, tmp_path: Path) -> None:
    relay = shared_relay
    password = "correct horse battery"
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    users = relay.users_file
    assert users is not None
    users.write_text(f"{SMTP_USER}:{digest}:smtp\n")
    time.sleep(1.1)  # the relay reloads a changed users file (mtime, size or inode)
    expected = swaks_sends(relay, tmp_path)
    auth = ("--tls", "--auth", "PLAIN", "--auth-user", SMTP_USER)
    wrong = swaks(relay, tmp_path, *auth, "--auth-password", "wrong")
    assert wrong.returncode != 0 and "535" in wrong.stdout, wrong.stdout
    done = swaks(relay, tmp_path, *auth, "--auth-password", password)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 " in done.stdout, done.stdout  # (<~: read under TLS)
    received, rest = _received(relay, 1)
    assert rest == expected
    assert re.search(rb"with ESMTPSA\b", received), received
    login = swaks(relay, tmp_path, "--tls", "--auth", "LOGIN", "--auth-user", SMTP_USER,
                  "--auth-password", password)  # fmt: skip
    assert login.returncode == 0, login.stdout + login.stderr
    assert _received(relay, 2)[1] == expected


def test_auth_without_tls_is_refused(shared_relay: Relay, tmp_path: Path) -> None:
    """Not offered before STARTTLS, and refused if tried anyway, even with the right password."""
    relay = shared_relay
    done = swaks(relay, tmp_path, "--auth", "PLAIN", "--auth-user", "x", "--auth-password", "y")
    assert done.returncode != 0
    assert "AUTH" not in done.stdout.split(" -> EHLO")[1].split(" -> ")[0], done.stdout
    password = "plaintext is never enough"
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert relay.users_file is not None
    relay.users_file.write_text(f"{SMTP_USER}:{digest}:smtp\n")
    time.sleep(1.1)  # the relay reloads a changed users file
    with RawClient(relay.host, relay.port) as client:
        client.ehlo()
        assert "AUTH" not in client.extensions
        reply = client.auth_plain(SMTP_USER, password)
        assert reply.code in (530, 538), reply  # encryption required
        client.quit()
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

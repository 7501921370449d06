"""`lbm smtp run` itself: readiness and port file, the banner with the acceptable-use notice, the
EHLO extensions (PIPELINING added, no CHUNKING), a pipelined transaction, the Received line, the
connection limit, and SIGTERM (sessions in DATA finish, others get 421, exit 0).

Real clients on loopback: `RawClient` (pipelining by hand), smtplib and swaks.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from lbm_testing import Lbm
from mail_relay import Relay, wait_until
from relay_setup import OUTSIDE_ADDR, SUBJECT_ADDR, RelayDir, prepare_relay_dir
from smtp_upstream import RawClient, SmtpProtocolError, data_block

PAYLOAD = b"From: a@elsewhere.example\r\nSubject: hello\r\n\r\n..dotted\r\nbody\r\n"
NOTICE = "Monitored for lawful business purposes (test notice)"


@pytest.fixture
def relay_dir(lbm: Lbm, tmp_path: Path) -> RelayDir:
    rd = prepare_relay_dir(lbm, tmp_path, grant=False, identities=False)
    rd.set("notice", "text", f'"{NOTICE}"')
    rd.set("notice", "version", '"2026-07"')
    rd.set("smtp", "max_connections", "3")
    return rd


@pytest.fixture
def relay(relay_dir: RelayDir, tmp_path: Path) -> Iterator[Relay]:
    relay = relay_dir.relay(tmp_path).start()
    try:
        yield relay
    finally:
        relay.close()


def test_ready_banner_extensions_pipelining_and_received_line(
    relay: Relay, relay_dir: RelayDir
) -> None:
    run = relay_dir.data_dir / "run"
    assert (run / "smtp.ready").read_text().strip() == str(relay.proc.pid if relay.proc else "")
    with RawClient(relay.host, relay.port) as c:
        assert c.banner.code == 220
        lines = c.banner.text.split("\n")
        assert lines[0].startswith("gw1 ") and f"{NOTICE} (notice 2026-07)" == lines[-1]
        c.ehlo("sender.example")
        assert {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "STARTTLS"} <= c.extensions
        assert "CHUNKING" not in c.extensions and "AUTH" not in c.extensions  # AUTH after TLS
        assert c.ehlo_reply is not None and f"SIZE {64 * 1024 * 1024}" in c.ehlo_reply.text
        # MAIL, RCPT, RCPT, DATA in one write; then the message
        result = c.send_message(
            OUTSIDE_ADDR, [SUBJECT_ADDR, "x@elsewhere.example"], PAYLOAD, pipelining=True
        )
        assert [r.code for _, r in result.replies] == [250, 250, 250, 354, 250], result.replies
        queued = result.final.text.rsplit(" ", 1)[-1] if result.final else ""
        single = c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], PAYLOAD, pipelining=True)
        assert single.accepted
    relay.stop()
    assert not (run / "smtp.ready").exists() and not (run / "smtp.port").exists()
    spooled = relay_dir.spooled()
    env, msg = spooled[queued]
    received, sep, payload = msg.partition(b"From: a@")
    assert payload and sep + payload == PAYLOAD  # unstuffed, byte-exact, after one Received
    assert received.count(b"Received:") == 1 and received.endswith(b"\r\n")
    text = received.decode()
    assert re.fullmatch(
        rf"Received: from sender\.example \(127\.0\.0\.1\)\r\n\tby gw1 with ESMTP id {queued}; "
        r"(.+)\r\n",
        text,
    ), text
    when = parsedate_to_datetime(text.rsplit("; ", 1)[1].strip())
    assert abs(when.timestamp() - env["received"]) < 2
    assert "for <" not in text  # two recipients: neither is shown to the other
    _, one = next((e, m) for e, m in spooled.values() if e["id"] != queued)
    assert f"\tfor <{SUBJECT_ADDR}>; ".encode() in one
    assert env["size"] == len(PAYLOAD)  # the DATA payload after unstuffing
    assert env["notice_version"] == "2026-07" and env["direction"] == "inbound"
    assert env["message_id_sha256"] is None  # no Message-ID header in this payload


def test_real_clients_smtplib_and_swaks(relay: Relay, relay_dir: RelayDir) -> None:
    import smtplib

    with smtplib.SMTP(relay.host, relay.port, timeout=30) as s:
        code, banner = s.ehlo()
        assert code == 250 and b"PIPELINING" in banner
        assert s.sendmail(OUTSIDE_ADDR, [SUBJECT_ADDR], PAYLOAD) == {}
    count = 1
    if shutil.which("swaks"):
        out = subprocess.run(
            ["swaks", "--server", f"{relay.host}:{relay.port}", "--from", OUTSIDE_ADDR,
             "--to", SUBJECT_ADDR, "--pipeline", "--header", "Subject: swaks"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "250 2.0.0 OK queued as" in out.stdout
        count += 1
    relay.stop()
    assert len(relay_dir.spooled()) == count


def test_connection_limit(relay: Relay, relay_dir: RelayDir) -> None:
    held = [RawClient(relay.host, relay.port) for _ in range(3)]  # max_connections = 3
    try:
        assert all(c.banner.code == 220 for c in held)
        with RawClient(relay.host, relay.port) as extra:
            assert extra.banner.code == 421 and "4.7.0" in extra.banner.text
            with pytest.raises((SmtpProtocolError, OSError)):
                extra.command("EHLO client.test")  # and closed
    finally:
        held[0].quit()
    wait_until(lambda: _banner_code(relay) == 220, 10, "a free connection slot")
    with held[1] as c:  # the held sessions were never disturbed
        c.ehlo()
        assert c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], PAYLOAD).accepted
    held[2].quit()
    assert relay.stop() == 0
    assert "connections_refused" in relay.output().decode()
    assert len(relay_dir.spooled()) == 1


def _banner_code(relay: Relay) -> int:
    try:
        with RawClient(relay.host, relay.port, timeout=10) as c:
            return c.banner.code
    except (SmtpProtocolError, OSError):
        return -1


def test_sigterm_finishes_sessions_in_data_and_answers_421_to_others(
    relay: Relay, relay_dir: RelayDir
) -> None:
    assert relay.proc is not None
    idle = RawClient(relay.host, relay.port)
    idle.ehlo()
    busy = RawClient(relay.host, relay.port)
    busy.ehlo()
    assert busy.command(f"MAIL FROM:<{OUTSIDE_ADDR}>").code == 250
    assert busy.command(f"RCPT TO:<{SUBJECT_ADDR}>").code == 250
    assert busy.command("DATA").code == 354
    block = data_block(PAYLOAD)
    busy.send(block[:20])  # half the message
    relay.proc.send_signal(signal.SIGTERM)
    reply = idle.read_reply()  # the idle session is told at once
    assert reply.code == 421 and "4.3.2" in reply.text
    time.sleep(0.5)
    assert relay.proc.poll() is None  # still finishing the session in DATA
    busy.send(block[20:])
    final = busy.read_reply()
    assert final.code == 250, final  # the message in DATA was accepted and spooled
    assert relay.stop() == 0
    idle.close()
    busy.close()
    spooled = relay_dir.spooled()
    assert len(spooled) == 1
    assert next(iter(spooled.values()))[1].endswith(PAYLOAD)
    assert "stopped" in relay.output().decode()


def test_sigterm_refuses_new_connections_promptly(relay: Relay) -> None:
    assert relay.proc is not None
    started = time.monotonic()
    assert relay.stop() == 0
    assert time.monotonic() - started < 10
    wait_until(lambda: _banner_code(relay) == -1, 5, "the port to close")


# -- the pure pieces the handler relies on ---------------------------------------------------


def test_classify_direction_principals_and_internal_parties() -> None:
    from appliance.mail.parties import classify

    book = {"s@force.example": "p1", "alias@force.example": "p1", "o@force.example": "p2"}

    def resolve(address: str) -> str | None:
        return book.get(address.lower())

    out = classify("S@Force.Example", ["x@ext.example", "o@force.example"], ["force.example"],
                   resolve)  # fmt: skip
    assert out.direction == "outbound"
    assert out.principals == {"x@ext.example": "p1", "o@force.example": "p1"}
    assert out.internal_parties == ["p1", "p2"]  # sender and the internal recipient
    inbound = classify("x@ext.example", ["alias@force.example", "nobody@force.example",
                                         "y@ext.example"], ["force.example"], resolve)  # fmt: skip
    assert inbound.direction == "inbound"
    assert inbound.principals == {
        "alias@force.example": "p1", "nobody@force.example": None, "y@ext.example": None
    }  # fmt: skip
    assert inbound.internal_parties == ["p1"] and inbound.unresolved == 1
    bounce = classify("", ["s@force.example"], ["force.example"], resolve)
    assert bounce.direction == "inbound" and bounce.internal_parties == ["p1"]
    spoof = classify("s@force.example.evil", ["y@ext.example"], ["force.example"], resolve)
    assert spoof.direction == "inbound" and spoof.internal_parties == []


def test_smuggling_patterns_and_legitimate_dots() -> None:
    from appliance.mail.handler import smuggling

    for bad in (b"a\n.\nb", b"a\n.\r\nb", b"a\r\n.\nb", b".\nfirst line", b"x\r\n\n.\n"):
        assert smuggling(bad), bad
    for good in (b"a\r\n.\r\nb", b"a\r\n..\r\nb", b"a\n..\nb", b"a.\nb", b"a\n.b\n", b""):
        assert not smuggling(good), good  # "\r\n.\r\n" here was "\r\n..\r\n" on the wire


def test_message_id_hash_reads_headers_only() -> None:
    import hashlib

    from appliance.mail.message import message_id_sha256

    value = b"<abc@host.example>"
    digest = hashlib.sha256(value).hexdigest()
    assert message_id_sha256(b"Subject: x\r\nMessage-ID: " + value + b"\r\n\r\nbody") == digest
    assert message_id_sha256(b"message-id:\r\n " + value + b"\r\n\r\n") == digest  # folded
    assert message_id_sha256(b"Subject: x\r\n\r\nMessage-ID: " + value + b"\r\n") is None
    assert message_id_sha256(b"Subject: x\nMessage-Id: " + value + b"\n\nb") == digest


def test_bad_settings_fail_with_one_clear_line(relay_dir: RelayDir, tmp_path: Path) -> None:
    """A missing configured certificate, half a TLS setting, a taken port: exit 1, one line
    naming the problem; nothing left listening or locked."""
    lbm = relay_dir.lbm
    relay_dir.set("smtp", "tls_cert", '"/nonexistent/smtp.pem"')
    relay_dir.set("smtp", "tls_key", '"/nonexistent/smtp.key"')
    result = lbm("smtp", "run", timeout=30)
    assert result.returncode == 1
    assert "[smtp] tls_cert /nonexistent/smtp.pem: no such file" in result.stderr
    relay_dir.set("smtp", "tls_key", '""')
    result = lbm("smtp", "run", timeout=30)
    assert result.returncode == 1 and "must be set together" in result.stderr
    relay_dir.set("smtp", "tls_cert", '""')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        relay_dir.set("smtp", "listen_port", str(taken.getsockname()[1]))
        result = lbm("smtp", "run", timeout=30)
    assert result.returncode == 1 and "cannot listen" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (relay_dir.data_dir / "run" / "smtp.ready").exists()


def test_a_second_relay_on_the_same_data_dir_is_refused(relay: Relay, relay_dir: RelayDir) -> None:
    second = relay_dir.lbm("smtp", "run", timeout=30)
    assert second.returncode == 1 and "in use by another relay" in second.stderr
    with RawClient(relay.host, relay.port) as c:  # the first one is untouched
        c.ehlo()
        assert c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], PAYLOAD).accepted

"""Bad input to the relay: the right reply code, nothing spooled for a message that was not
accepted, and the relay keeps serving. One real `lbm smtp run` per test module section, real
sockets on loopback (`RawClient` writes the wire by hand, so malformed dialogues are possible).

`[smtp] max_recipients = 3` and `max_message_bytes = 3 MiB` keep the limits cheap to reach.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm
from mail_relay import Relay
from relay_setup import OUTSIDE_ADDR, SUBJECT_ADDR, RelayDir, prepare_relay_dir
from smtp_upstream import RawClient, SendResult, SmtpProtocolError, data_block

MIB = 1024 * 1024
HEAD = b"From: a@elsewhere.example\r\nSubject: malformed\r\n\r\n"


@pytest.fixture
def relay_dir(lbm: Lbm, tmp_path: Path) -> RelayDir:
    rd = prepare_relay_dir(lbm, tmp_path, grant=False, identities=False)
    rd.set("smtp", "max_recipients", "3")
    rd.set("smtp", "max_message_bytes", str(3 * MIB))
    return rd


@pytest.fixture
def relay(relay_dir: RelayDir, tmp_path: Path) -> Iterator[Relay]:
    relay = relay_dir.relay(tmp_path).start()
    try:
        yield relay
    finally:
        relay.close()


def _client(relay: Relay) -> RawClient:
    c = RawClient(relay.host, relay.port)
    c.ehlo()
    return c


def _queued(result: SendResult) -> str:
    assert result.accepted, result.replies
    assert result.final is not None
    return result.final.text.rsplit(" ", 1)[-1]


def _still_serving(relay: Relay) -> str:
    with _client(relay) as c:
        return _queued(c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + b"still here\r\n"))


def test_bad_commands_and_sequence(relay: Relay, relay_dir: RelayDir) -> None:
    with RawClient(relay.host, relay.port) as c:
        assert c.command("MAIL FROM:<a@elsewhere.example>").code == 503  # before HELO
        assert c.command("DATA").code == 503
        assert c.command("EHLO two words").code == 501  # not a host name
        assert c.command(b"EHLO bad\x01name").code == 501
        c.ehlo()
        assert c.command("FROBNICATE").code == 500
        assert c.command(b"\xff\xfe").code == 500
        assert c.command("").code == 500
    with _client(relay) as c:
        assert c.command("RCPT TO:<b@elsewhere.example>").code == 503  # before MAIL
        assert c.command("DATA").code == 503
        assert c.command("MAIL").code == 501
        assert c.command("MAIL FROM:<a@elsewhere.example>").code == 250
        assert c.command("MAIL FROM:<a@elsewhere.example>").code == 503  # nested
        assert c.command("DATA").code == 503  # DATA before RCPT
        assert c.command("BDAT 10 LAST").code == 500  # no CHUNKING
        assert "CHUNKING" not in c.extensions
    accepted = {_still_serving(relay)}
    relay.stop()
    assert set(relay_dir.spooled()) == accepted


def test_bad_and_overlong_addresses(relay: Relay, relay_dir: RelayDir) -> None:
    cases: list[tuple[bytes, int, str]] = [
        (b"MAIL FROM:<no-at-sign>", 553, "5.1.3"),
        (b"MAIL FROM:<a@>", 553, "5.1.3"),
        (b"MAIL FROM:<a@b..example>", 553, "5.1."),
        (b"MAIL FROM:<a@[bad literal>", 553, "5.1."),
        (b"MAIL FROM:<" + b"l" * 65 + b"@elsewhere.example>", 501, "5.1.3"),
        (b"MAIL FROM:<a@" + b"d" * 250 + b".example>", 501, "5.1.3"),
        (b"MAIL FROM:<a@" + b"d" * 2000 + b".example>", 500, "too long"),
        (b"MAIL FROM:<a@b.example> SIZE=999999999", 552, "size"),
        (b"MAIL FROM:<a@b.example> FROB=1", 555, ""),
        # invalid UTF-8 without SMTPUTF8, and even with it; valid UTF-8 needs SMTPUTF8
        (b"MAIL FROM:<caf\xe9@elsewhere.example>", 553, "5.6.7"),
        (b"MAIL FROM:<caf\xe9@elsewhere.example> SMTPUTF8", 553, "5.6.7"),
        ("MAIL FROM:<café@elsewhere.example>".encode(), 553, "5.6.7"),
    ]
    for line, code, text in cases:
        with _client(relay) as c:
            reply = c.command(line)
            assert reply.code == code, (line[:60], reply)
            assert text.lower() in reply.text.lower(), (line[:60], reply)
    with _client(relay) as c:
        assert c.command("MAIL FROM:<a@elsewhere.example>").code == 250
        assert c.command(b"RCPT TO:<caf\xe9@force.example>").code == 553
        assert c.command("RCPT TO:<>").code == 553
        assert c.command("RCPT TO:<" + "x" * 70 + "@force.example>").code == 501
    with _client(relay) as c:  # UTF-8 with SMTPUTF8 is fine
        assert c.command("MAIL FROM:<café@elsewhere.example> SMTPUTF8".encode()).code == 250
        assert c.command("RCPT TO:<zoë@force.example>".encode()).code == 250
        assert c.command("DATA").code == 354
        c.send(data_block(HEAD + "Grüße\r\n".encode()))
        reply = c.read_reply()
        assert reply.code == 250
        utf8_id = reply.text.rsplit(" ", 1)[-1]
    with _client(relay) as c:  # the null sender (a bounce) is accepted
        null_id = _queued(c.send_message("", [SUBJECT_ADDR], HEAD + b"bounce\r\n"))
    accepted = {utf8_id, null_id, _still_serving(relay)}
    relay.stop()
    spooled = relay_dir.spooled()
    assert set(spooled) == accepted
    assert spooled[null_id][0]["mail_from"] == ""


def test_limits_recipients_size_and_line_length(relay: Relay, relay_dir: RelayDir) -> None:
    accepted = set()
    with _client(relay) as c:
        rcpts = [f"r{i}@elsewhere.example" for i in range(5)]
        result = c.send_message(OUTSIDE_ADDR, rcpts, HEAD + b"five recipients\r\n")
        assert [r.code for r in result.rcpts] == [250, 250, 250, 452, 452]
        assert "4.5.3" in result.rcpts[3].text
        accepted.add(_queued(result))  # for the first three
    with _client(relay) as c:  # oversize: 552 after DATA, nothing kept
        big = HEAD + (b"x" * 998 + b"\r\n") * (3 * MIB // 1000 + 10)
        result = c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], big)
        assert result.code == 552, result.replies
    line = b"y" * (MIB - 2) + b"\r\n"  # a line of exactly 1 MiB with its CRLF passes
    dotted = b"." + b"z" * (MIB - 3) + b"\r\n"  # so does one starting with a dot (stuffed)
    over = b"w" * (MIB + 1) + b"\r\n"  # one byte more than the limit allows
    with _client(relay) as c:
        one_mib = _queued(c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + line))
        dot_mib = _queued(c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + dotted))
        result = c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + over + b"after\r\n")
        assert result.code == 500 and "too long" in result.text.lower(), result.replies
        again = _queued(c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + b"same session\r\n"))
    accepted |= {one_mib, dot_mib, again, _still_serving(relay)}
    relay.stop()
    spooled = relay_dir.spooled()
    assert set(spooled) == accepted
    assert spooled[one_mib][1].endswith(HEAD + line)  # byte-exact after the Received line
    assert spooled[dot_mib][1].endswith(HEAD + dotted)
    five = [env for env, _ in spooled.values() if len(env["rcpts"]) > 1]
    assert len(five) == 1 and five[0]["rcpts"] == [f"r{i}@elsewhere.example" for i in range(3)]


@pytest.mark.parametrize(
    "sequence", [b"\n.\n", b"\n.\r\n", b"\r\n.\n"], ids=["LF.LF", "LF.CRLF", "CRLF.LF"]
)
def test_smuggling_sequences_refused(relay: Relay, relay_dir: RelayDir, sequence: bytes) -> None:
    smuggled = HEAD + b"hello" + sequence + b"MAIL FROM:<evil@elsewhere.example>\r\nrest\r\n"
    with _client(relay) as c:
        result = c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], smuggled)
        assert result.code == 550 and "5.5.2" in result.text, result.replies
        # the session goes on
        ok = _queued(c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], HEAD + b"clean\r\n"))
    relay.stop()
    assert set(relay_dir.spooled()) == {ok}
    assert "smuggling 1" in relay.output().decode()


def test_client_vanishing_mid_data_writes_nothing(relay: Relay, relay_dir: RelayDir) -> None:
    canary = b"CANARY-VANISH-" + os.urandom(8).hex().encode()
    for cut in (b"", b"partial line without end", b"a full line\r\n"):
        c = _client(relay)
        assert c.command("MAIL FROM:<a@elsewhere.example>").code == 250
        assert c.command(f"RCPT TO:<{SUBJECT_ADDR}>").code == 250
        assert c.command("DATA").code == 354
        c.send(HEAD + canary + b"\r\n" + cut)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
    ok = _still_serving(relay)
    relay.stop()
    assert set(relay_dir.spooled()) == {ok}
    for path in relay_dir.data_dir.rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path


def test_tls_handshake_garbage(relay: Relay, relay_dir: RelayDir) -> None:
    with _client(relay) as c:
        assert c.command("STARTTLS").code == 220
        c.send(b"\x16\x03\x01\x00\x05garbage that is not a ClientHello\r\n" * 3)
        with pytest.raises((SmtpProtocolError, OSError)):
            c.read_reply()
    with _client(relay) as c:  # a TLS ClientHello on the plain port, no STARTTLS
        ctx = ssl.create_default_context()
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(c.sock, server_hostname="127.0.0.1").do_handshake()
    with _client(relay) as c:  # a real handshake with a client that trusts nobody fails
        assert c.command("STARTTLS").code == 220
        with pytest.raises(ssl.SSLError):
            ssl.create_default_context().wrap_socket(c.sock, server_hostname="127.0.0.1")
    ok = _still_serving(relay)
    relay.stop()
    assert set(relay_dir.spooled()) == {ok}

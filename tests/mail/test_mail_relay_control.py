"""The relay is never an open relay, and AUTH is offered only over TLS, only to users flagged
`smtp`, whose MAIL FROM must then resolve to their own principal.

A real `lbm smtp run` on loopback; `[smtp] allowed_clients` is set to a network that does not
hold 127.0.0.1 (192.0.2.0/24), so the test's connections from 127.0.0.1 stand for an outside
client. Real clients: `RawClient` (the wire, by hand) and smtplib.
"""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
from lbm_testing import Lbm
from relay_setup import (
    OTHER_ADDR,
    OUTSIDE_ADDR,
    PLAIN_PASSWORD,
    PLAIN_USER,
    SMTP_PASSWORD,
    SMTP_USER,
    SUBJECT_ADDR,
    SUBJECT_ALIAS,
    RelayDir,
    prepare_relay_dir,
)
from smtp_upstream import RawClient

PAYLOAD = b"From: x@y.example\r\nSubject: relay test\r\n\r\nbody\r\n"


@pytest.fixture
def outside(lbm: Lbm, tmp_path: Path) -> RelayDir:
    """A relay dir whose allowed_clients does not include the test's address."""
    rd = prepare_relay_dir(lbm, tmp_path, grant=False)
    rd.set("smtp", "allowed_clients", '["192.0.2.0/24"]')
    return rd


def test_unauthenticated_outside_client_cannot_relay(outside: RelayDir, tmp_path: Path) -> None:
    relay = outside.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            for rcpt in (OUTSIDE_ADDR, SUBJECT_ADDR, OTHER_ADDR):
                result = c.send_message(OUTSIDE_ADDR, [rcpt], PAYLOAD)
                assert [r.code for r in result.rcpts] == [554], (rcpt, result.replies)
                assert "5.7.1" in result.rcpts[0].text
                assert result.final is None  # DATA never went on
            # pipelined, as a spammer would: still refused, DATA refused for want of a recipient
            result = c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], PAYLOAD, pipelining=True)
            assert [r.code for r in result.rcpts] == [554]
            assert result.data is not None and result.data.code == 503
        with (
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
            smtplib.SMTP(relay.host, relay.port, timeout=30) as s,
        ):
            s.sendmail(OUTSIDE_ADDR, [OUTSIDE_ADDR], PAYLOAD)
        assert refused.value.recipients[OUTSIDE_ADDR][0] == 554
    finally:
        assert relay.stop() == 0
    assert outside.spooled() == {}
    assert "relay_denied 5" in relay.stderr() + relay.output().decode()


def test_auth_refused_without_tls(outside: RelayDir, tmp_path: Path) -> None:
    relay = outside.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            assert "AUTH" not in c.extensions and "STARTTLS" in c.extensions
            reply = c.auth_plain(SMTP_USER, SMTP_PASSWORD)  # right credentials, in clear
            assert reply.code == 538 and "5.7.11" in reply.text
            reply = c.command("AUTH LOGIN")
            assert reply.code == 538
            result = c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], PAYLOAD)
            assert [r.code for r in result.rcpts] == [554]  # still not allowed to relay
    finally:
        assert relay.stop() == 0
    assert outside.spooled() == {}


def _tls_client(rd: RelayDir, host: str, port: int) -> RawClient:
    c = RawClient(host, port)
    c.ehlo()
    assert c.starttls(rd.tls_context(), server_hostname="127.0.0.1").code == 220
    c.ehlo()
    return c


def test_auth_over_tls_for_smtp_user_may_relay_its_own_address(
    outside: RelayDir, tmp_path: Path
) -> None:
    relay = outside.relay(tmp_path).start()
    try:
        # wrong password, user without the smtp flag, unknown user: 535, and still no relay
        for user, password in (
            (SMTP_USER, "wrong"),
            (PLAIN_USER, PLAIN_PASSWORD),
            ("nobody", SMTP_PASSWORD),
        ):
            with _tls_client(outside, relay.host, relay.port) as c:
                assert "AUTH" in c.extensions
                reply = c.auth_plain(user, password)
                assert reply.code == 535, (user, reply)
                result = c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], PAYLOAD)
                assert [r.code for r in result.rcpts] == [554]
        with _tls_client(outside, relay.host, relay.port) as c:
            assert c.auth_plain(SMTP_USER, SMTP_PASSWORD).code == 235
            # MAIL FROM must resolve to the authenticated principal
            for sender in (OTHER_ADDR, OUTSIDE_ADDR, ""):
                result = c.send_message(sender, [OUTSIDE_ADDR], PAYLOAD)
                assert result.mail is not None and result.mail.code == 550, sender
                assert "5.7.1" in result.mail.text
            ok = c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], PAYLOAD)
            assert ok.accepted, ok.replies
            alias = c.send_message(SUBJECT_ALIAS.upper(), [OTHER_ADDR], PAYLOAD)
            assert alias.accepted, alias.replies  # an alias of the same principal, any case
        # smtplib, AUTH LOGIN over STARTTLS
        ctx = outside.tls_context()
        with smtplib.SMTP(relay.host, relay.port, timeout=30) as s:
            s.starttls(context=ctx)
            s.login(SMTP_USER, SMTP_PASSWORD)
            assert s.sendmail(SUBJECT_ADDR, [OUTSIDE_ADDR], PAYLOAD) == {}
    finally:
        assert relay.stop() == 0
    spooled = outside.spooled()
    assert len(spooled) == 3
    for env, msg in spooled.values():
        assert env["auth_user"] == SMTP_USER
        assert env["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert env["client_ip"] == "127.0.0.1"
        assert msg.endswith(PAYLOAD)
        assert b" with ESMTPSA id " in msg.split(b"\r\n\r\n")[0]


def test_client_inside_allowed_clients_relays_without_auth(lbm: Lbm, tmp_path: Path) -> None:
    # allowed_clients left at the embedded default: loopback
    rd = prepare_relay_dir(lbm, tmp_path, grant=False, identities=False)
    relay = rd.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            assert c.send_message(OUTSIDE_ADDR, [SUBJECT_ADDR], PAYLOAD).accepted
    finally:
        assert relay.stop() == 0
    assert len(rd.spooled()) == 1


def test_tls_certificate_is_the_gateways(outside: RelayDir, tmp_path: Path) -> None:
    """STARTTLS verifies against keys/smtp.crt (made by `lbm init`, key 0600)."""
    key = outside.data_dir / "keys" / "smtp.key"
    assert key.stat().st_mode & 0o777 == 0o600
    relay = outside.relay(tmp_path).start()
    try:
        with _tls_client(outside, relay.host, relay.port) as c:
            assert isinstance(c.sock, ssl.SSLSocket)
            assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        assert relay.stop() == 0

"""DSNs (RFC 3464): to the sender, through the return route, with the original headers only.

The attack is the body leaking into the report: a message without a blank line, with bare LFs,
or with a body line that looks like a header after a non-header line. A DSN that fails too is
dropped, recorded in metadata (its `bounced` row, is_dsn) and audited `dsn_dropped`.
"""

from __future__ import annotations

import email
import email.policy
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from delivery_kit import Relay, RowSink, envelope, smtp_config, wait_until
from lbm_testing import Lbm
from smtp_upstream import RecordingUpstream

from appliance.cli.app import App
from appliance.mail.dsn import build_dsn, original_headers

CANARY = "BODYCANARY7731"


@pytest.mark.parametrize(
    ("message", "headers"),
    [
        pytest.param(
            f"Subject: s\r\nFrom: a@b\r\n\r\n{CANARY}\r\n".encode(),
            b"Subject: s\r\nFrom: a@b\r\n",
            id="crlf",
        ),
        pytest.param(
            f"Subject: s\nFrom: a@b\n\n{CANARY}\n".encode(),
            b"Subject: s\r\nFrom: a@b\r\n",
            id="bare-lf",
        ),
        pytest.param(
            f"Subject: s\r\n{CANARY} no colon here\r\nX-Fake: {CANARY}\r\n".encode(),
            b"Subject: s\r\n",
            id="no-blank-line",
        ),
        pytest.param(
            b"Subject: folded\r\n  second part\r\nTo: x@y\r\n\r\nbody\r\n",
            b"Subject: folded\r\n  second part\r\nTo: x@y\r\n",
            id="folded",
        ),
        pytest.param(f" {CANARY}\r\nSubject: s\r\n".encode(), b"", id="starts-with-fold"),
        pytest.param(f"{CANARY}\r\n".encode(), b"", id="no-header"),
    ],
)
def test_original_headers_never_hold_the_body(message: bytes, headers: bytes) -> None:
    assert original_headers(message) == headers


def _bounced(mail_from: str = "alice@force.example") -> object:
    env = envelope(["gone@remote.example", "also@remote.example"], mail_from=mail_from)
    env.bounced = list(env.rcpts)
    env.failures = {
        "gone@remote.example": "550 5.1.1 no such user",
        "also@remote.example": "4.4.7 still undelivered after 120 hours",
    }
    return env


def test_dsn_is_a_delivery_status_report() -> None:
    env = _bounced()
    message = f"Received: x\r\nSubject: the plan\r\nMessage-ID: <m1@x>\r\n\r\n{CANARY}\r\n"
    dsn = build_dsn(env, message.encode(), reporting_mta="gw.test", now=datetime.now(UTC))
    assert CANARY.encode() not in dsn
    assert b"\n" not in dsn.replace(b"\r\n", b"")  # CRLF everywhere
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert str(parsed["To"]) == "alice@force.example"
    types = [p.get_content_type() for p in parsed.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = dsn.split(b"Content-Type: message/delivery-status")[1]
    assert b"Final-Recipient: rfc822; gone@remote.example" in status
    assert b"Status: 5.1.1" in status and b"Status: 4.4.7" in status
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in status
    assert b"Subject: the plan\r\nMessage-ID: <m1@x>\r\n" in dsn


def test_5xx_sends_the_sender_a_dsn_with_headers_only(tmp_path: Path, monkeypatch) -> None:
    from smtp_upstream import _Handler

    record = _Handler.handle_DATA

    async def refuse_all_but_bounces(self: object, server: object, session: object,
                                     env: object) -> str:  # fmt: skip
        if getattr(env, "mail_from", "") not in ("", "<>"):
            return "554 5.7.1 refused by policy"
        return await record(self, server, session, env)  # type: ignore[arg-type]

    monkeypatch.setattr(_Handler, "handle_DATA", refuse_all_but_bounces)
    rows = RowSink()
    with RecordingUpstream() as up:
        cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=up.port,
                          upstream_starttls="optional")  # fmt: skip
        message = f"Received: x\r\nSubject: quarterly\r\n\r\n{CANARY} body\r\n".encode()
        with Relay(tmp_path / "spool", cfg, rows=rows) as relay:
            env = relay.submit(envelope(["x@remote.example"]), message)
            dsn = up.wait_for(1)[0]  # return_route defaults to the upstream
            wait_until(lambda: not relay.spooled(), what="spool drained")
    assert dsn.rcpts == [env.mail_from] and dsn.mail_from in ("", "<>")
    assert b"Subject: quarterly" in dsn.content and CANARY.encode() not in dsn.content
    assert b"Status: 5.7.1" in dsn.content
    bounced = rows.of("bounced")[0]
    assert (bounced["smtp_code"], bounced["smtp_status"], bounced["is_dsn"]) == (
        554,
        "5.7.1",
        False,
    )
    dsn_rows = [r for r in rows.rows if r["is_dsn"]]
    assert {r["outcome"] for r in dsn_rows} == {"queued", "delivered"}
    assert all(r["rcpt_to"] == env.mail_from and r["mail_from"] == "" for r in dsn_rows)
    assert not list((tmp_path / "spool").glob("*.msg"))


def test_dsn_goes_through_the_return_route(tmp_path: Path) -> None:
    with RecordingUpstream() as up, RecordingUpstream() as route:
        up.fail_rcpt("550 5.1.1 no such user")
        cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=up.port,
                          upstream_starttls="optional",
                          return_route=f"127.0.0.1:{route.port}")  # fmt: skip
        with Relay(tmp_path / "spool", cfg) as relay:
            relay.submit(envelope(), b"Subject: r\r\n\r\nb\r\n")
            assert route.wait_for(1)[0].rcpts == ["alice@force.example"]
            wait_until(lambda: not relay.spooled(), what="spool drained")
        assert up.messages == []


def test_a_failing_dsn_is_dropped_recorded_and_audited(tmp_path: Path, lbm: Lbm) -> None:
    app = App(str(lbm.data_dir), None)
    rows = RowSink()
    with RecordingUpstream() as up:
        up.fail_rcpt("550 5.1.1 nobody here")  # the message and its DSN both refused
        cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=up.port,
                          upstream_starttls="optional")  # fmt: skip
        with Relay(tmp_path / "spool", cfg, rows=rows, audit=app.audit) as relay:
            env = relay.submit(envelope(), f"Subject: s\r\n\r\n{CANARY}\r\n".encode())
            wait_until(lambda: [r for r in rows.of("bounced") if r["is_dsn"]], what="DSN bounce")
            wait_until(lambda: not relay.spooled(), what="spool drained")
            time.sleep(1.0)
            assert relay.worker is not None and relay.worker.counts["dsn_dropped"] == 1
    dropped = [e for e in app.audit.entries() if e["action"] == "dsn_dropped"]
    assert len(dropped) == 1
    assert CANARY not in str(dropped[0]) and env.mail_from not in str(dropped[0])
    dsn_bounce = [r for r in rows.of("bounced") if r["is_dsn"]]
    assert dsn_bounce[0]["rcpt_to"] == env.mail_from and dsn_bounce[0]["smtp_code"] == 550
    assert len(rows.of("bounced")) == 2  # the message, then its DSN: no DSN for a DSN

"""The delivery worker against a real upstream (aiosmtpd, `RecordingUpstream`) on loopback.

Messages enter through `Spool.accept`, as the relay's handler puts them there. What is pinned:
the upstream receives the spooled bytes exactly (bare LFs, dots, 1 MiB lines); per-recipient
outcomes and their `email` rows; retries after 4xx and a dead upstream until it comes back;
STARTTLS verified against a test CA (a wrong CA or a missing STARTTLS defers, never sends in
clear); AUTH only over TLS; sessions reused; restart resumes; a crash after the upstream's 250
delivers twice and is counted; a subject's spool entry waits for its archive segment to close;
the embedded default writes to the maildrop maildir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from delivery_kit import Relay, RowSink, envelope, make_tls, smtp_config, wait_until
from lbm_testing import Lbm
from smtp_upstream import RecordingUpstream

from appliance.cli.app import App
from store.clock import Clock

REPO = Path(__file__).resolve().parents[2]

PAYLOADS = {
    "crlf": b"Subject: plain\r\n\r\nline one\r\nline two\r\n",
    "bare-lf": b"Subject: bare\n\nline one\nline two\n",
    "dots": b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    "lf-dot-lf": b"Subject: x\r\n\r\nbefore\n.\nafter\r\n",
    "mixed-cr": b"Subject: cr\r\n\r\na\rb\r\n\r\n\r\n",
    "8bit": "Subject: caf\u00e9\r\n\r\nna\u00efve \u2603\r\n".encode(),
    "long-line": b"Subject: long\r\n\r\n" + b"x" * (1024 * 1024 - 2) + b"\r\n",
    "no-final-crlf-body": b"Subject: e\r\n\r\n.",
}


def _received(payload: bytes) -> bytes:
    return b"Received: from client.test (127.0.0.1) by gw1; Tue, 1 Dec 2026 00:00:00 +0000\r\n" + (
        payload if payload.endswith(b"\r\n") else payload + b"\r\n"
    )


def _cfg(upstream: RecordingUpstream, **extra: object) -> object:
    options: dict[str, object] = {
        "upstream_host": "127.0.0.1",
        "upstream_port": upstream.port,
        "upstream_starttls": "optional",
    }
    options.update(extra)
    return smtp_config(**options)


@pytest.fixture
def upstream() -> object:
    with RecordingUpstream() as server:
        yield server


def test_upstream_receives_the_spooled_bytes_exactly(tmp_path: Path, upstream) -> None:
    rows = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows) as relay:
        sent = {name: relay.submit(envelope(), _received(p)) for name, p in PAYLOADS.items()}
        got = upstream.wait_for(len(PAYLOADS))
        wait_until(lambda: not relay.spooled(), what="spool drained")
    by_content = {m.content for m in got}
    for name, payload in PAYLOADS.items():
        assert _received(payload) in by_content, f"{name} was altered on the way upstream"
    delivered = rows.of("delivered")
    assert {r["uid"] for r in delivered} == {e.id for e in sent.values()}
    assert all(r["smtp_code"] == 250 and r["attempt"] == 1 for r in delivered)
    assert all(r["upstream"] == f"127.0.0.1:{upstream.port}" for r in delivered)
    assert list((tmp_path / "spool").glob("*.msg")) == []


def test_per_recipient_outcomes(tmp_path: Path, upstream, monkeypatch) -> None:
    """One recipient refused 550, one 451, one accepted: delivered, deferred, bounced rows; the
    deferred one is retried alone. A null sender gets no DSN."""
    from aiosmtpd.smtp import SMTP, Envelope, Session
    from smtp_upstream import _Handler

    rows = RowSink()
    good, later, bad = "ok@remote.example", "later@remote.example", "gone@remote.example"
    replies = {later: "451 4.2.0 mailbox busy", bad: "550 5.1.1 no such user"}

    async def handle_rcpt(self: object, server: SMTP, session: Session, env: Envelope,
                          address: str, options: list[str]) -> str:  # fmt: skip
        if address in replies:
            return replies[address]
        env.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    monkeypatch.setattr(_Handler, "handle_RCPT", handle_rcpt)
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows) as relay:
        env = relay.submit(envelope([good, later, bad], mail_from=""), b"Subject: x\r\n\r\ny\r\n")
        assert upstream.wait_for(1)[0].rcpts == [good]
        wait_until(lambda: rows.of("deferred"), what="deferred row")
        outcomes = rows.outcomes(env.id)
        assert ("delivered", good) in outcomes
        assert ("bounced", bad) in outcomes
        assert ("deferred", later) in outcomes
        bounced = rows.of("bounced")[0]
        assert (bounced["smtp_code"], bounced["smtp_status"]) == (550, "5.1.1")
        deferred = rows.of("deferred")[0]
        assert (deferred["smtp_code"], deferred["smtp_status"]) == (451, "4.2.0")
        replies.pop(later)
        msgs = upstream.wait_for(2)
        assert msgs[1].rcpts == [later]
        wait_until(lambda: not relay.spooled(), what="spool drained")
        time.sleep(1.5)
    assert rows.outcomes(env.id).count(("delivered", later)) == 1
    assert len(upstream.messages) == 2, "a DSN went to a null sender"


def test_upstream_down_then_up_delivers_everything(tmp_path: Path, upstream) -> None:
    rows = RowSink()
    upstream.stop()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows) as relay:
        envs = [
            relay.submit(envelope(), _received(b"Subject: n\r\n\r\nbody\r\n")) for _ in range(5)
        ]
        wait_until(lambda: len({r["uid"] for r in rows.of("deferred")}) == 5, what="deferrals")
        assert len(relay.spooled()) == 5
        deferred = rows.of("deferred")[0]
        assert deferred["smtp_code"] is None and deferred["smtp_status"] == "4.4.1"
        upstream.start()
        upstream.wait_for(5, timeout=30)
        wait_until(lambda: not relay.spooled(), what="spool drained")
    assert {r["uid"] for r in rows.of("delivered")} == {e.id for e in envs}
    assert all(r["attempt"] >= 2 for r in rows.of("delivered"))


def test_4xx_at_data_is_retried(tmp_path: Path, upstream) -> None:
    upstream.fail_data("451 4.3.0 upstream says later")
    rows = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows) as relay:
        env = relay.submit(envelope(), b"Subject: r\r\n\r\nx\r\n")
        wait_until(lambda: rows.of("deferred"), what="deferral")
        row = rows.of("deferred")[0]
        assert (row["smtp_code"], row["smtp_status"]) == (451, "4.3.0")
        upstream.accept()
        upstream.wait_for(1)
        wait_until(lambda: not relay.spooled(), what="spool drained")
    assert ("delivered", "bob@remote.example") in rows.outcomes(env.id)


def test_restart_resumes_the_spool(tmp_path: Path, upstream) -> None:
    upstream.stop()
    rows = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows) as relay:
        envs = [relay.submit(envelope(), b"Subject: r\r\n\r\nx\r\n") for _ in range(3)]
        wait_until(lambda: len(rows.of("deferred")) >= 3, what="deferrals")
    assert len(list((tmp_path / "spool").glob("*.json"))) == 3
    upstream.start()
    rows2 = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows2) as relay:
        upstream.wait_for(3)
        wait_until(lambda: not relay.spooled(), what="spool drained")
    assert {r["uid"] for r in rows2.of("delivered")} == {e.id for e in envs}
    # queued rows are written again at start for entries not known to have them durable
    assert {r["uid"] for r in rows2.of("queued")} == {e.id for e in envs}


def test_queued_rows_known_durable_are_not_written_again(tmp_path: Path, upstream) -> None:
    """With the writer's flush confirming them, an entry's envelope records that its `queued`
    rows are durable; a restart then writes none again (without it, it writes them again)."""
    flushes = []

    async def flush() -> None:  # stands for MetadataWriter.aflush
        flushes.append(1)

    upstream.stop()
    rows = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows, flush_rows=flush) as relay:
        env = relay.submit(envelope(), b"Subject: q\r\n\r\nx\r\n")
        wait_until(lambda: len(rows.of("deferred")) >= 2, what="two deferrals")
    assert flushes
    assert json.loads((tmp_path / "spool" / f"{env.id}.json").read_text())["queued_rows"]
    rows2 = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows2) as relay:
        wait_until(lambda: rows2.of("deferred"), what="a deferral after restart")
    assert rows2.of("queued") == []


def test_starttls_required_verifies_the_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with RecordingUpstream(tls_cert=tls["cert"], tls_key=tls["key"], hostname="localhost") as up:
        rows = RowSink()
        cfg = smtp_config(
            upstream_host="localhost",
            upstream_port=up.port,
            upstream_starttls="required",
            upstream_ca_file=str(tls["ca"]),
        )
        with Relay(tmp_path / "ok", cfg, rows=rows) as relay:
            relay.submit(envelope(), b"Subject: tls\r\n\r\nsecret\r\n")
            msg = up.wait_for(1)[0]
            assert msg.tls, "the message went upstream in clear"
        # the wrong CA: refused, deferred, never sent
        up.clear()
        rows = RowSink()
        cfg.values["smtp.upstream_ca_file"] = str(tls["other_ca"])
        with Relay(tmp_path / "bad", cfg, rows=rows) as relay:
            relay.submit(envelope(), b"Subject: tls\r\n\r\nsecret\r\n")
            wait_until(lambda: rows.of("deferred"), what="deferral")
            time.sleep(0.5)
            assert up.messages == []
            assert relay.spooled()
        assert rows.of("delivered") == []


def test_starttls_required_but_not_offered_is_never_sent_in_clear(tmp_path: Path, upstream) -> None:
    rows = RowSink()
    with Relay(tmp_path / "spool", _cfg(upstream, upstream_starttls="required"), rows=rows) as r:
        r.submit(envelope(), b"Subject: x\r\n\r\ny\r\n")
        wait_until(lambda: rows.of("deferred"), what="deferral")
        assert upstream.messages == [] and r.spooled()


def test_auth_to_the_upstream_over_tls(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    with RecordingUpstream(
        tls_cert=tls["cert"], tls_key=tls["key"], auth_users={"relay": "s3cret"}
    ) as up:
        cfg = smtp_config(
            upstream_host="localhost",
            upstream_port=up.port,
            upstream_ca_file=str(tls["ca"]),
            upstream_user="relay",
            upstream_password_file=str(secret),
        )
        with Relay(tmp_path / "spool", cfg) as relay:
            relay.submit(envelope(), b"Subject: a\r\n\r\nb\r\n")
            msg = up.wait_for(1)[0]
    assert msg.auth_user == "relay" and msg.tls


def test_sessions_are_reused(tmp_path: Path, upstream) -> None:
    with Relay(tmp_path / "spool", _cfg(upstream, delivery_concurrency=4)) as relay:
        for _ in range(60):
            relay.submit(envelope(), b"Subject: s\r\n\r\nb\r\n")
        upstream.wait_for(60)
    assert upstream.connections <= 8, f"{upstream.connections} sessions for 60 messages"


def test_subject_entry_waits_for_its_segment_to_close(tmp_path: Path, upstream) -> None:
    closed: set[str] = set()
    record = "ref-1/000001/0"
    with Relay(tmp_path / "spool", _cfg(upstream), archive_closed=closed.__contains__) as relay:
        env = relay.submit(envelope(record_ids=[record]), b"Subject: s\r\n\r\nb\r\n")
        upstream.wait_for(1)
        time.sleep(2.5)
        assert relay.spooled() == [f"{env.id}.json"], "removed before the segment closed"
        assert not list((tmp_path / "spool").glob("*.dlv")), "a finished delivery looks unfinished"
        assert json.loads((tmp_path / "spool" / f"{env.id}.json").read_text())["pending"] == []
        closed.add(record)
        wait_until(lambda: not relay.spooled(), timeout=10, what="removal after close")
    assert len(upstream.messages) == 1


def test_maildrop_is_the_embedded_default(tmp_path: Path) -> None:
    maildrop = tmp_path / "lbm-maildrop"
    rows = RowSink()
    message = _received(b"Subject: m\n\nbare lf\n.\n")
    with Relay(tmp_path / "spool", smtp_config(maildrop=str(maildrop)), rows=rows) as relay:
        relay.submit(envelope(["a@x.example", "b@y.example"]), message)
        files = wait_until(lambda: list((maildrop / "new").glob("*")), what="maildrop file")
        wait_until(lambda: not relay.spooled(), what="spool drained")
    assert [f.read_bytes() for f in files] == [message]
    assert list((maildrop / "tmp").iterdir()) == []
    assert {r["rcpt_to"] for r in rows.of("delivered")} == {"a@x.example", "b@y.example"}


def test_lifetime_end_bounces_with_4_4_7(tmp_path: Path, upstream) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    clock = Clock(fixed=start)
    rows = RowSink()
    with RecordingUpstream() as returns:
        upstream.stop()
        cfg = _cfg(upstream, lifetime_hours=1, return_route=f"127.0.0.1:{returns.port}")
        with Relay(tmp_path / "spool", cfg, rows=rows, clock=clock) as relay:
            env = envelope()
            env.received = start.timestamp()
            relay.submit(env, b"Subject: old news\r\n\r\nthe body\r\n")
            wait_until(lambda: rows.of("deferred"), what="first deferral")
            assert not rows.of("bounced")
            clock.set(start + timedelta(hours=1, seconds=1))
            wait_until(lambda: rows.of("bounced"), timeout=10, what="bounce at lifetime end")
            dsn = returns.wait_for(1)[0]
            wait_until(lambda: not relay.spooled(), what="spool drained")
    assert rows.of("bounced")[0]["smtp_status"] == "4.4.7"
    assert dsn.mail_from in ("", "<>") and dsn.rcpts == [env.mail_from]
    assert b"Status: 4.4.7" in dsn.content and b"Subject: old news" in dsn.content
    assert b"the body" not in dsn.content


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time, pathlib
    sys.path.insert(0, "tests/support")
    from delivery_kit import Relay, envelope, smtp_config
    cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=int(sys.argv[2]),
                      upstream_starttls="optional")
    relay = Relay(pathlib.Path(sys.argv[1]), cfg).start()
    relay.submit(envelope(), b"Subject: twice\\r\\n\\r\\nbody\\r\\n")
    print("accepted", flush=True)
    time.sleep(60)
    """
)


def test_crash_after_upstream_250_delivers_twice_and_is_counted(
    tmp_path: Path, upstream, monkeypatch, lbm: Lbm
) -> None:
    """kill -9 after the upstream has the message but before its 250 reached the worker."""
    import asyncio

    from smtp_upstream import _Handler

    record = _Handler.handle_DATA
    stall = {"seconds": 30.0}

    async def record_then_stall(self: object, server: object, session: object, env: object) -> str:
        reply = await record(self, server, session, env)  # type: ignore[arg-type]
        await asyncio.sleep(stall["seconds"])
        return reply

    monkeypatch.setattr(_Handler, "handle_DATA", record_then_stall)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path / "spool"), str(upstream.port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "accepted"
        upstream.wait_for(1)  # recorded upstream; the 250 is held back
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    stall["seconds"] = 0.0
    rows = RowSink()
    app = App(str(lbm.data_dir), None)
    with Relay(tmp_path / "spool", _cfg(upstream), rows=rows, audit=app.audit) as relay:
        assert relay.worker is not None
        assert relay.worker.counts["possible_duplicates"] == 1
        upstream.wait_for(2)
        wait_until(lambda: not relay.spooled(), what="spool drained")
    twice = [m for m in upstream.messages if b"Subject: twice" in m.content]
    print(f"arrived twice: {len(twice) - 1}")
    assert len(twice) == 2
    counted = [e for e in app.audit.entries() if e["action"] == "spool_duplicates"]
    assert [e["fields"]["count"] for e in counted] == [1]


def test_pipelined_transactions_keep_per_recipient_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream offering PIPELINING gets RSET, MAIL, RCPT... and DATA in one write; refused
    recipients still get their own outcome, and a transaction with no recipient left sends no
    message on the reused session."""
    from aiosmtpd.smtp import SMTP, Envelope, Session
    from smtp_upstream import _Handler

    async def handle_ehlo(self: object, server: SMTP, session: Session, env: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:  # fmt: skip
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_rcpt(self: object, server: SMTP, session: Session, env: Envelope,
                          address: str, options: list[str]) -> str:  # fmt: skip
        if address.startswith("gone"):
            return "550 5.1.1 no such user"
        env.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    monkeypatch.setattr(_Handler, "handle_EHLO", handle_ehlo, raising=False)
    monkeypatch.setattr(_Handler, "handle_RCPT", handle_rcpt)
    rows = RowSink()
    with RecordingUpstream() as up:
        cfg = _cfg(up, delivery_concurrency=1)
        with Relay(tmp_path / "spool", cfg, rows=rows) as relay:
            mixed = relay.submit(
                envelope(["a@remote.example", "gone1@remote.example"], mail_from=""), b"S: 1\r\n"
            )
            none = relay.submit(envelope(["gone2@remote.example"], mail_from=""), b"S: 2\r\n")
            last = relay.submit(envelope(["b@remote.example"], mail_from=""), b"S: 3\r\n")
            up.wait_for(2)
            wait_until(lambda: not relay.spooled(), what="spool drained")
            assert relay.worker is not None
            sessions = relay.worker.transport.opened  # type: ignore[attr-defined]
            idle = relay.worker.transport._idle  # type: ignore[attr-defined]
            assert "PIPELINING" in idle[0][1].extensions  # the pipelined path was taken
    assert [(m.rcpts, m.content) for m in up.messages] == [
        (["a@remote.example"], b"S: 1\r\n"),
        (["b@remote.example"], b"S: 3\r\n"),
    ]
    assert ("bounced", "gone1@remote.example") in rows.outcomes(mixed.id)
    assert rows.outcomes(none.id) == [("bounced", "gone2@remote.example")]
    assert ("delivered", "b@remote.example") in rows.outcomes(last.id)
    assert sessions == 1 and up.connections == 1


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        pytest.param("upstream_ca_file", '"/nonexistent/ca.pem"', "upstream_ca_file", id="ca"),
        pytest.param(
            "upstream_password_file", '"/nonexistent/pw"', "upstream_password_file", id="password"
        ),
        pytest.param("upstream_starttls", '"sometimes"', "required or optional", id="starttls"),
        pytest.param("return_route", '"no-port"', "HOST:PORT", id="return-route"),
    ],
)
def test_bad_delivery_options_stop_the_relay_with_one_line(
    lbm: Lbm, key: str, value: str, needle: str
) -> None:
    from mail_relay import set_option

    set_option(lbm.data_dir, "smtp", "upstream_host", '"127.0.0.1"')
    set_option(lbm.data_dir, "smtp", key, value)
    result = lbm("smtp", "run", timeout=60)
    assert result.returncode in (1, 2)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_refusing_or_misconfigured_next_hop_defers_never_bounces(tmp_path: Path) -> None:
    """A 554 greeting (a real server refusing the connection) and a wrong AUTH password are the
    next hop's or our configuration's fault, not the mail's: deferred, never bounced."""
    import socketserver
    import threading

    class Refuse(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"554 5.7.1 no service for you\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = RowSink()
    try:
        cfg = smtp_config(upstream_host="127.0.0.1", upstream_port=server.server_address[1],
                          upstream_starttls="optional")  # fmt: skip
        with Relay(tmp_path / "refuse", cfg, rows=rows) as relay:
            relay.submit(envelope(), b"Subject: r\r\n\r\nb\r\n")
            wait_until(lambda: rows.of("deferred"), what="deferral")
            assert relay.spooled()
    finally:
        server.shutdown()
        server.server_close()
    assert rows.of("bounced") == []
    assert rows.of("deferred")[0]["smtp_code"] == 554

    tls = make_tls(tmp_path / "tls")
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    rows = RowSink()
    with RecordingUpstream(tls_cert=tls["cert"], tls_key=tls["key"],
                           auth_users={"relay": "right"}) as up:  # fmt: skip
        cfg = smtp_config(upstream_host="localhost", upstream_port=up.port,
                          upstream_ca_file=str(tls["ca"]), upstream_user="relay",
                          upstream_password_file=str(secret))  # fmt: skip
        with Relay(tmp_path / "auth", cfg, rows=rows) as relay:
            relay.submit(envelope(), b"Subject: a\r\n\r\nb\r\n")
            wait_until(lambda: rows.of("deferred"), what="deferral")
            assert relay.spooled() and up.messages == []
    assert rows.of("bounced") == []

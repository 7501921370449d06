"""Subjects' mail is archived before `250`, byte-exact; nobody else's is.

A real `lbm smtp run` with an `email` grant for the subject (p12345: subject@force.example and
the alias the.subject@force.example). The archive is read back after the relay stopped (SIGTERM
seals every open segment) with the investigator's age identity, as an investigator would.
Archive rule (DECISIONS.md, Wave 2): the sender of outbound mail or any internal recipient.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lbm_testing import Lbm
from relay_setup import (
    OTHER_ADDR,
    OUTSIDE_ADDR,
    REF,
    SUBJECT,
    SUBJECT_ADDR,
    SUBJECT_ALIAS,
    prepare_relay_dir,
    use_upstream,
)
from smtp_upstream import RawClient, RecordingUpstream, SendResult, split_received

from store.keys import KeyStore
from store.metadata import read_stream
from store.paths import DataPaths


def _payload(tag: str, canary: bytes) -> bytes:
    """CRLF lines, a bare LF inside a line, 8-bit bytes, a line starting with a dot, no final
    newline trouble: what the archive must keep exactly."""
    return (
        b"From: <x@elsewhere.example>\r\nSubject: " + canary + b" " + tag.encode() + b"\r\n"
        b"Message-ID: <" + tag.encode() + b"@test>\r\nX-Hdr: " + canary + b"\r\n\r\n"
        b"body " + canary + b"\r\n.leading dot\r\nbare\nlf inside\r\n\xe9\xff 8-bit\r\n"
    )


def _id(result: SendResult) -> str:
    assert result.accepted, result.replies
    assert result.final is not None
    return result.final.text.rsplit(" ", 1)[-1]


def test_subject_copies_decrypt_byte_exact_and_others_are_not_archived(
    lbm: Lbm, tmp_path: Path
) -> None:
    rd = prepare_relay_dir(lbm, tmp_path)
    secret = b"NONSUBJECT-CANARY-" + os.urandom(6).hex().encode()
    mine = b"SUBJECT-TOKEN-" + os.urandom(6).hex().encode()
    sends = {
        "outbound-from-subject": (SUBJECT_ADDR, [OUTSIDE_ADDR], _payload("a", mine)),
        "inbound-to-alias": (OUTSIDE_ADDR, [SUBJECT_ALIAS, OTHER_ADDR], _payload("b", mine)),
        "outbound-other-to-subject": (OTHER_ADDR, [SUBJECT_ADDR], _payload("c", mine)),
        "outbound-other": (OTHER_ADDR, [OUTSIDE_ADDR], _payload("d", secret)),
        "inbound-other": (OUTSIDE_ADDR, [OTHER_ADDR], _payload("e", secret)),
        "external-only": (OUTSIDE_ADDR, [OUTSIDE_ADDR], _payload("f", secret)),
    }
    relay = rd.relay(tmp_path).start()
    ids = {}
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            for name, (sender, rcpts, payload) in sends.items():
                ids[name] = _id(c.send_message(sender, rcpts, payload))
        # archived before 250: the segment's index (fsynced per record) lists every record now
        index = rd.data_dir / "archive" / REF / "000001.index.jsonl"
        kinds = [json.loads(line)["kind"] for line in index.read_text().splitlines()]
        assert kinds == ["message", "envelope"] * 3
    finally:
        assert relay.stop() == 0
    spooled = rd.spooled()
    archived_names = ["outbound-from-subject", "inbound-to-alias", "outbound-other-to-subject"]
    recs = rd.archived()
    assert [r.header["kind"] for r in recs] == ["message", "envelope"] * 3
    for r in recs:
        assert r.header["channel"] == "email" and r.header["principal"] == SUBJECT
        assert secret not in r.data
    for i, name in enumerate(archived_names):
        sender, rcpts, payload = sends[name]
        message, envelope = recs[2 * i], recs[2 * i + 1]
        assert message.data == payload  # byte-exact: the DATA payload as the client sent it
        env = json.loads(envelope.data)
        assert env["spool_id"] == ids[name]
        assert env["mail_from"] == sender and env["rcpts"] == rcpts
        assert env["client_ip"] == "127.0.0.1" and env["helo"] == "client.test"
        spooled_env, spooled_msg = spooled[ids[name]]
        assert env["received_line"].encode() + payload == spooled_msg
        assert spooled_env["refs"] == [REF]
        assert spooled_env["record_ids"] == [message.header["id"], envelope.header["id"]]
    for name in ("outbound-other", "inbound-other", "external-only"):
        env, msg = spooled[ids[name]]
        assert env["refs"] == [] and env["record_ids"] == []
        assert msg.endswith(sends[name][2])
    # direction and principals per DECISIONS.md
    assert spooled[ids["outbound-from-subject"]][0]["direction"] == "outbound"
    assert spooled[ids["outbound-from-subject"]][0]["principals"] == {OUTSIDE_ADDR: SUBJECT}
    inbound = spooled[ids["inbound-to-alias"]][0]
    assert inbound["direction"] == "inbound"
    assert inbound["principals"] == {SUBJECT_ALIAS: SUBJECT, OTHER_ADDR: "p22222"}
    # the `queued` rows: one per recipient, envelope only, refs and record ids for subjects
    rows = [r for r in read_stream(DataPaths(rd.data_dir), "email").to_pylist()
            if r["outcome"] == "queued"]  # fmt: skip
    by_uid: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_uid.setdefault(str(row["uid"]), []).append(row)
    assert set(by_uid) == set(ids.values())
    for name, (sender, rcpts, _) in sends.items():
        got = sorted(by_uid[ids[name]], key=lambda r: str(r["rcpt_to"]))
        assert [r["rcpt_to"] for r in got] == sorted(rcpts)
        for r in got:
            assert r["mail_from"] == sender and r["smtp_code"] == 250 and r["attempt"] == 0
            assert r["refs"] == ([REF] if name in archived_names else [])
            assert r["record_ids"] == spooled[ids[name]][0]["record_ids"]
            assert r["client_ip"] == "127.0.0.1" and r["server_port"] == relay.port
    assert by_uid[ids["outbound-other-to-subject"]][0]["principal"] == "p22222"  # the sender
    # nothing of the non-subjects' mail anywhere but the spool (transit; the relay has no
    # delivery settings here, so it is still queued there)
    for path in rd.data_dir.rglob("*"):
        if path.is_file() and path.parent.name != "spool":
            assert secret not in path.read_bytes(), path


def test_archive_failure_still_accepts_relays_audits_and_counts_the_gap(
    lbm: Lbm, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    rd = prepare_relay_dir(lbm, tmp_path)
    use_upstream(rd, upstream)  # a real aiosmtpd next hop recording exact bytes
    pub = KeyStore(DataPaths(rd.data_dir)).auth_pub_path(REF)
    pub.rename(pub.with_name(pub.name + ".away"))  # the archive cannot make a segment
    token = b"GAP-TOKEN-" + os.urandom(6).hex().encode()
    payload = _payload("gap", token)
    relay = rd.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            spool_id = _id(c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], payload))
            # the next message, of someone else, is untouched by the failure
            other_id = _id(c.send_message(OTHER_ADDR, [OUTSIDE_ADDR], _payload("x", b"x")))
        got = upstream.wait_for(2)
    finally:
        assert relay.stop() == 0
    relayed = {m.content.split(b" id ", 1)[1].split(b";", 1)[0].split()[0]: m for m in got}
    assert set(relayed) == {spool_id.encode(), other_id.encode()}
    received, rest = split_received(relayed[spool_id.encode()].content)
    assert rest == payload and received.startswith(b"Received: from client.test")
    assert rd.spooled() == {}  # delivered: nothing left in transit
    gaps = [e for e in rd.audit() if e.get("action") == "capture_gap"]
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    text = json.dumps(gap)
    assert gap["refs"] == [REF] and spool_id in text and '"email"' in text
    assert token.decode() not in text and SUBJECT_ADDR not in text
    assert "archive_gap 1" in relay.output().decode()
    assert rd.archived() == []


def test_cancellation_stops_archiving_within_seconds(lbm: Lbm, tmp_path: Path) -> None:
    rd = prepare_relay_dir(lbm, tmp_path)
    relay = rd.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            before = _id(c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], _payload("1", b"one")))
            lbm("auth", "cancel", REF, "--reason", "test", "--officer", "p100", check=True)
            time.sleep(2.0)  # the relay's snapshot follows the registry within a second
            after = _id(c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], _payload("2", b"two")))
    finally:
        assert relay.stop() == 0
    spooled = rd.spooled()
    assert spooled[before][0]["refs"] == [REF]
    assert spooled[after][0]["refs"] == [] and spooled[after][0]["record_ids"] == []
    assert [r.data for r in rd.archived() if r.header["kind"] == "message"] == [
        _payload("1", b"one")
    ]  # what was lawfully recorded before stays


def test_a_subjects_delivered_message_leaves_the_spool_at_stop(
    lbm: Lbm, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """The spool is transit only: a subject's delivered message waits for its segment to be
    sealed (60 s), and a stop seals it, so nothing delivered is left spooled across a stop."""
    rd = prepare_relay_dir(lbm, tmp_path)
    use_upstream(rd, upstream)
    relay = rd.relay(tmp_path).start()
    try:
        with RawClient(relay.host, relay.port) as c:
            c.ehlo()
            spool_id = _id(c.send_message(SUBJECT_ADDR, [OUTSIDE_ADDR], _payload("s", b"t")))
        upstream.wait_for(1)
        assert spool_id in rd.spooled()  # delivered, but its segment is still open
    finally:
        assert relay.stop() == 0
    assert rd.spooled() == {}
    assert [r.header["kind"] for r in rd.archived()] == ["message", "envelope"]

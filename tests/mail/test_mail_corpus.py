"""Every corpus email through `lbm smtp run`, byte-exact, for a subject and a non-subject.

Each file of `emails/dev` and `emails/malformed` is sent by the raw client (DATA written by hand:
dot-stuffing after CRLF only, the file's own line endings untouched) from the subject's address,
from a non-subject's, and from outside to the subject. The upstream (a real aiosmtpd server)
must receive exactly one `Received:` field followed by the dot-unstuffed wire payload, for every
file the relay accepts; the subject's copies (sent and received) decrypt byte-exact from the
archive with the investigator's identity (`lbm archive export-raw`), and nothing of the
non-subject's is archived; the email rows name the authorisation and records for the subject's
messages only.

Files the relay must refuse are found by scanning the corpus here (SMTP lines end at CRLF, so an
LF-only file is one long wire line) and are also listed by name with their reply code; the scan
and the list must agree, so a corpus change is noticed. The corpus holds no smuggling sequence,
so each of the three is also spliced into a corpus message and must be refused `550 5.5.2`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from lbm_testing import corpus_root
from mail_relay import OTHER, OTHER_ADDR, OUTSIDE_ADDR, REF, SUBJECT, SUBJECT_ADDR, MailDir, Relay
from smtp_upstream import (
    RawClient,
    RecordingUpstream,
    data_block,
    expected_content,
    relayed_payload,
)

from store.metadata import read_stream
from store.paths import DataPaths

MIB = 1024 * 1024
LINE_LIMIT = MIB  # DECISIONS.md, Mail: lines up to 1 MiB pass
SMUGGLING = {
    "LF.LF": re.compile(rb"(?<!\r)\n\.\n"),
    "LF.CRLF": re.compile(rb"(?<!\r)\n\.\r\n"),
    "CRLF.LF": re.compile(rb"\r\n\.\n"),
}
LINE_TOO_LONG = 500  # aiosmtpd's reply, after reading the whole DATA (RFC 5321 4.5.3.1.6)
SMUGGLED = 550

# What the scan below must find in the corpus: file name -> (reply code, why).
REFUSED = {
    "flanker__torture.eml": (LINE_TOO_LONG, "LF-only, 1.8 MB: one wire line over 1 MiB"),
}


def _corpus() -> dict[str, bytes]:
    root = corpus_root() / "emails"
    if not (root / "dev").is_dir() or not (root / "malformed").is_dir():
        pytest.skip(f"email corpus not found under {root} (set LBM_CORPUS to ../shared/corpus)")
    return {
        f"{d}/{p.name}": p.read_bytes()
        for d in ("dev", "malformed")
        for p in sorted((root / d).glob("*.eml"))
    }


def refusal(payload: bytes) -> int | None:
    """The reply code the relay must give `payload` after DATA, or None if it must accept it."""
    if max(len(line) + 2 for line in payload.split(b"\r\n")) > LINE_LIMIT:
        return LINE_TOO_LONG
    if any(rx.search(payload) for rx in SMUGGLING.values()):
        return SMUGGLED
    return None


def test_the_scan_finds_exactly_the_listed_refusals() -> None:
    corpus = _corpus()
    assert len(corpus) == 74, sorted(corpus)
    scanned = {name.split("/")[1]: code for name, p in corpus.items() if (code := refusal(p))}
    assert scanned == {name: code for name, (code, _why) in REFUSED.items()}


def test_the_raw_client_stuffs_only_after_crlf_and_a_bare_server_gets_the_payload() -> None:
    """The harness itself, against a bare aiosmtpd server (no relay): dots are stuffed only at
    the start of a CRLF line, so every corpus payload (line endings untouched) arrives as sent."""
    assert data_block(b".a\r\nb\n.c\r\n..d\r\n") == b"..a\r\nb\n.c\r\n...d\r\n.\r\n"
    assert data_block(b"no final newline") == b"no final newline\r\n.\r\n"
    corpus = _corpus()
    with RecordingUpstream() as bare:
        with RawClient("127.0.0.1", bare.port) as client:
            client.ehlo()
            for payload in corpus.values():
                assert client.send_message(OTHER_ADDR, [OUTSIDE_ADDR], payload).code == 250
            client.quit()
        got = bare.wait_for(len(corpus))
    assert [m.content for m in got] == [expected_content(p) for p in corpus.values()]


Mail = tuple[str, str, bytes]  # sender, recipient, payload


def _send_all(relay: Relay, mails: list[Mail]) -> list[int | None]:
    """Each message on one reused connection (a fresh one after a refusal)."""
    codes: list[int | None] = []
    client: RawClient | None = None
    for sender, rcpt, payload in mails:
        if client is None:
            client = RawClient(relay.host, relay.port)
            assert client.ehlo().code == 250
        result = client.send_message(sender, [rcpt], payload)
        codes.append(result.code)
        if result.code != 250:
            client.close()
            client = None
    if client is not None:
        client.quit()
    return codes


def test_every_corpus_email_arrives_byte_exact_and_the_subjects_decrypt_byte_exact(
    relay: Relay, mail_dir: MailDir, tmp_path: Path
) -> None:
    """Every file: outbound from the subject, outbound from a non-subject, and inbound to the
    subject (an internal recipient: archived too)."""
    corpus = _corpus()
    kinds = [(SUBJECT_ADDR, OUTSIDE_ADDR), (OTHER_ADDR, OUTSIDE_ADDR), (OUTSIDE_ADDR, SUBJECT_ADDR)]
    mails = [(s, r, p) for s, r in kinds for p in corpus.values()]
    names = list(corpus) * len(kinds)
    codes = _send_all(relay, mails)
    expected = [refusal(p) or 250 for _, _, p in mails]
    rows_ = zip(mails, names, codes, expected, strict=True)
    wrong = [(name, s, r, got, want) for (s, r, _), name, got, want in rows_ if got != want]
    assert not wrong, wrong

    accepted = [m for m, code in zip(mails, codes, strict=True) if code == 250]
    got = relay.upstream.wait_for(len(accepted), timeout=120)
    # (The spool keeps a subject's message until its archive segment closes, up to 60 s: the
    # test does not wait for that; stopping the relay closes the segment.)
    time.sleep(0.5)
    assert len(relay.upstream.messages) == len(accepted)  # nothing refused was relayed
    unmatched = Counter((s, r, expected_content(p)) for s, r, p in accepted)
    for msg in got:
        match = next(
            (
                k
                for k in unmatched
                if (k[0], [k[1]]) == (msg.mail_from, msg.rcpts)
                and relayed_payload(msg.content, k[2])
            ),
            None,
        )
        assert match is not None, f"relayed message matches nothing sent: {msg.content[:300]!r}"
        unmatched[match] -= 1
        if not unmatched[match]:
            del unmatched[match]
    assert not unmatched

    # The archive: exactly the subject's accepted messages, decrypted byte-exact.
    assert relay.stop() == 0  # closes the open segment
    records = mail_dir.export(tmp_path / "export")
    messages = [(meta, data) for meta, data in records if meta["kind"] == "message"]
    assert {meta["principal"] for meta, _ in records} == {SUBJECT}
    assert {meta["channel"] for meta, _ in records} == {"email"}
    envelopes = [meta for meta, _ in records if meta["kind"] == "envelope"]
    assert len(envelopes) == len(messages)  # docs/archive-format.md, Mail
    subjects = [m for m in accepted if SUBJECT_ADDR in m[:2]]
    assert Counter(data for _, data in messages) == Counter(
        expected_content(p) for _, _, p in subjects
    )

    # The metadata: a queued and a delivered row per accepted message; the subject's name the
    # authorisation and the two archive records, the non-subject's nothing.
    rows = read_stream(DataPaths(relay.data_dir), "email").to_pylist()
    for outcome in ("queued", "delivered"):
        mine = [r for r in rows if r["outcome"] == outcome]
        assert Counter((r["mail_from"], r["rcpt_to"]) for r in mine) == Counter(
            (s, r) for s, r, _ in accepted
        ), outcome
        for r in mine:
            inbound = r["rcpt_to"] == SUBJECT_ADDR
            assert r["direction"] == ("inbound" if inbound else "outbound"), r
            if SUBJECT_ADDR in (r["mail_from"], r["rcpt_to"]):
                assert r["principal"] == SUBJECT and r["refs"] == [REF], r
                assert len(r["record_ids"]) == 2 and all(
                    x.startswith(f"{REF}/") for x in r["record_ids"]
                )
            else:
                assert r["principal"] == OTHER and r["refs"] == [] and r["record_ids"] == [], r
    archived_ids = {meta["id"] for meta, _ in records}
    assert {x for r in rows for x in r["record_ids"]} == archived_ids


def test_each_smuggling_sequence_spliced_into_a_corpus_email_is_refused(
    shared_relay: Relay,
) -> None:
    relay = shared_relay
    base = _corpus()["dev/mikelmail__plain_emails__basic_email.eml"]
    assert b"\r\n" in base and refusal(base) is None
    smuggled = b"MAIL FROM:<ceo@force.example>\r\nRCPT TO:<victim@elsewhere.example>\r\nDATA\r\n"
    at = base.index(b"\r\n\r\n") + 4
    with RawClient(relay.host, relay.port) as client:
        client.ehlo()
        for name, seq in {"LF.LF": b"\n.\n", "LF.CRLF": b"\n.\r\n", "CRLF.LF": b"\r\n.\n"}.items():
            payload = base[:at] + b"first part" + seq + smuggled + b"forged\r\n" + base[at:]
            assert refusal(payload) == SMUGGLED
            result = client.send_message(OTHER_ADDR, [OUTSIDE_ADDR], payload)
            assert (result.code, result.text[:5]) == (550, "5.5.2"), (name, result)
        # the relay keeps serving on the same connection
        ok = client.send_message(OTHER_ADDR, [OUTSIDE_ADDR], base)
        assert ok.code == 250, ok
        client.quit()
    (msg,) = relay.upstream.wait_for(1)
    assert relayed_payload(msg.content, base)
    relay.wait_drained()
    time.sleep(0.5)
    assert relay.upstream.messages == [msg]

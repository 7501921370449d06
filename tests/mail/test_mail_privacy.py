"""Privacy canary: a non-subject's content never reaches the data dir or the relay's output.

A token is put in the Subject line, in another header and in the body of a non-subject's mail,
sent through `lbm smtp run` in every way it can travel: relayed at once, deferred by the upstream
(4xx) then relayed, bounced by the upstream (5xx: the DSN goes back with the original headers),
inbound to an internal non-subject, refused by the relay (a smuggling sequence), and cut off
mid-DATA by a client that vanishes. After the queue drains and the relay stops, the token appears
in no file under the data dir: not in the raw bytes of any file, nor in any decoded value of the
Parquet files (compressed, so a byte search alone proves nothing) or of the metadata journal
(zstd Arrow IPC), nor in the archive decrypted with the investigator's identity; and not in
anything the relay printed. A control proves the decoding works: envelope addresses (metadata)
are found by the same scan.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mail_relay import OTHER_ADDR, OUTSIDE_ADDR, MailDir, Relay
from smtp_upstream import RawClient, split_received

from store.journal import decode_batches, scan_frames


def _values(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield str(key)
            yield from _values(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _values(value)
    elif isinstance(obj, bytes):
        yield obj.decode("utf-8", "replace")
    elif obj is not None:
        yield str(obj)


def _tables(path: Path) -> list[pa.Table]:
    if path.suffix == ".parquet":
        return [pq.read_table(path)]
    if path.suffix == ".journal":
        frames, _left = scan_frames(path.read_bytes())
        out = []
        for frame in frames:
            if frame.kind == 1:
                _stream, batches = decode_batches(frame.payload)
                out += [pa.Table.from_batches(batches)] if batches else []
        return out
    return []


def scan(root: Path, token: str) -> list[str]:
    """Where `token` appears under `root`: raw bytes of every file (case-insensitive) and every
    decoded Parquet/journal value."""
    hits = []
    needle = token.lower().encode()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if needle in path.read_bytes().lower():
            hits.append(f"{path} (raw bytes)")
        for table in _tables(path):
            if any(token.lower() in v.lower() for v in _values(table.to_pylist())):
                hits.append(f"{path} (decoded values)")
    return hits


def _message(token: str, n: int, sender: str, rcpt: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: weekend plans {token}\r\n"
        f"Message-ID: <privacy-{n}@force.example>\r\nX-Note: see {token} here\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello,\r\nthe word is {token}.\r\n.{token} at a line start (dot-stuffed)\r\n"
    ).encode()


def test_a_non_subjects_token_is_nowhere_in_the_data_dir_nor_in_the_relays_output(
    relay: Relay, mail_dir: MailDir, tmp_path: Path
) -> None:
    token = "canary" + secrets.token_hex(8)
    upstream = relay.upstream
    deferred, bounced = "later@elsewhere.example", "nobody@elsewhere.example"
    upstream.rcpt_replies[deferred] = "451 4.2.0 mailbox busy, later"
    upstream.rcpt_replies[bounced] = "550 5.1.1 no such user"

    with RawClient(relay.host, relay.port) as client:
        assert client.ehlo().code == 250
        sends = [
            (OTHER_ADDR, OUTSIDE_ADDR),  # outbound, relayed at once
            (OTHER_ADDR, deferred),  # deferred, then relayed
            (OTHER_ADDR, bounced),  # bounced: a DSN back to the sender
            (OUTSIDE_ADDR, OTHER_ADDR),  # inbound to an internal non-subject
        ]
        for n, (sender, rcpt) in enumerate(sends):
            result = client.send_message(sender, [rcpt], _message(token, n, sender, rcpt))
            assert result.code == 250, result
        smuggled = _message(token, 9, OTHER_ADDR, OUTSIDE_ADDR) + b"x\n.\r\nMAIL FROM:<a@b>\r\n"
        assert client.send_message(OTHER_ADDR, [OUTSIDE_ADDR], smuggled).code == 550
        client.quit()

    # a client that vanishes in the middle of DATA
    with RawClient(relay.host, relay.port) as client:
        client.ehlo()
        for line in (f"MAIL FROM:<{OTHER_ADDR}>", f"RCPT TO:<{OUTSIDE_ADDR}>", "DATA"):
            assert client.command(line).code in (250, 354)
        client.send(_message(token, 10, OTHER_ADDR, OUTSIDE_ADDR)[:150])
        client.sock.shutdown(socket.SHUT_RDWR)

    # relayed at once: outbound, inbound and the DSN; then the deferred one after a retry
    upstream.wait_for(3, timeout=30)
    upstream.rcpt_replies.pop(deferred)
    got = upstream.wait_for(4, timeout=60)
    relay.wait_drained(timeout=60)
    dsn = [m for m in got if m.rcpts == [OTHER_ADDR] and m.mail_from in ("", "<>")]
    assert len(dsn) == 1, [(m.mail_from, m.rcpts) for m in got]
    dsn_body = split_received(dsn[0].content)[1]
    assert b"weekend plans" in dsn_body  # the original headers go back to the sender...
    assert b"the word is" not in dsn_body  # ...never the body
    assert relay.stop() == 0

    data = relay.data_dir
    assert scan(data, token) == []
    assert token.encode() not in relay.output()
    for meta, content in mail_dir.export(tmp_path / "export"):
        assert token.encode() not in content, meta
    # Control: the scan does decode the metadata (envelope addresses are metadata).
    assert any("(decoded values)" in hit for hit in scan(data, deferred)), "no email rows?"

"""What the relay reads or adds to a message: the `Received:` line it prepends and the SHA-256 of
the Message-ID (for joining metadata; the value itself is never kept). Nothing else of a message
is parsed, and nothing of it is logged."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from email.utils import format_datetime

HEADER_SCAN = 256 * 1024  # the Message-ID is looked for in the header block within this prefix
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:", re.IGNORECASE | re.MULTILINE)


def protocol_name(*, esmtp: bool, tls: bool, auth: bool) -> str:
    """RFC 3848 `with` keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


def received_line(
    *,
    helo: str | None,
    client_ip: str,
    gateway: str,
    protocol: str,
    spool_id: str,
    rcpts: list[str],
    when: datetime,
) -> bytes:
    """One RFC 5321 4.4 trace header, folded, CRLF-terminated. `for <rcpt>` only when there is
    exactly one recipient (as Postfix does): listing several would show each recipient (Bcc
    included) every other one."""
    helo_text = helo if helo else "unknown"
    text = f"Received: from {helo_text} ({client_ip})\r\n"
    text += f"\tby {gateway} with {protocol} id {spool_id}"
    if len(rcpts) == 1:
        text += f"\r\n\tfor <{rcpts[0]}>"
    text += f"; {format_datetime(when.astimezone(UTC))}\r\n"
    return text.encode("utf-8", "surrogateescape")


def message_id_sha256(message: bytes) -> str | None:
    """SHA-256 hex of the first Message-ID header's value (unfolded, whitespace-trimmed), or None.
    Only the header block (up to the first empty line) is looked at."""
    head = message[:HEADER_SCAN]
    end = _END_OF_HEADERS.search(head)
    if end is not None:
        head = head[: end.start() + 1]
    found = _MESSAGE_ID.search(head)
    if found is None:
        return None
    rest = head[found.end() :]
    lines = re.split(rb"\r?\n", rest)
    value = lines[0]
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            value += line
        else:
            break
    value = value.strip()
    return hashlib.sha256(value).hexdigest() if value else None

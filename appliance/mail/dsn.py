"""Delivery status notifications (RFC 3464) for mail that finally failed.

The DSN goes to the envelope sender (never for a null sender, never for a DSN) from the null
sender, as `multipart/report; report-type=delivery-status` with three parts: a short human
explanation, the `message/delivery-status` fields per failed recipient, and the original message's
headers only (`text/rfc822-headers`): no line of the body is ever copied (DECISIONS.md, Mail).

The header block is cut conservatively: it ends at the first empty line or at the first line
that is neither a `Name:` field nor a folded continuation, so a message without a blank line
cannot leak its body into the report.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime

from appliance.mail.spool import Envelope, new_id

_FIELD_RE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_HEADER_BYTES = 256 * 1024


def original_headers(message: bytes) -> bytes:
    """The header block of `message` (CRLF line ends), without any body line."""
    out: list[bytes] = []
    size = 0
    for raw in message.splitlines(keepends=True):
        line = raw.rstrip(b"\r\n")
        if not line:
            break
        if not (_FIELD_RE.match(line) or (out and line[:1] in (b" ", b"\t"))):
            break
        size += len(line) + 2
        if size > MAX_HEADER_BYTES:
            break
        out.append(line + b"\r\n")
    return b"".join(out)


def _clean(text: str, limit: int = 300) -> str:
    """One printable ASCII line (a reply text from another server)."""
    flat = " ".join(text.split())
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in flat)[:limit]


def status_of(diagnostic: str, default: str = "5.0.0") -> str:
    match = _STATUS_RE.search(diagnostic)
    return match.group(0) if match else default


def build_dsn(
    original: Envelope,
    message: bytes,
    *,
    reporting_mta: str,
    now: datetime,
    boundary: str | None = None,
) -> bytes:
    """The DSN for every recipient in `original.bounced`, diagnostics from `original.failures`."""
    boundary = boundary or f"lbm-dsn-{secrets.token_hex(12)}"
    mta = _clean(reporting_mta, 200)
    msgid = f"<{new_id()}.dsn@{mta}>"
    arrival = format_datetime(datetime.fromtimestamp(original.received, UTC))
    human = [
        f"This is the mail gateway at {mta}.",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    per_rcpt: list[str] = []
    for rcpt in original.bounced:
        diagnostic = _clean(original.failures.get(rcpt, "5.0.0 delivery failed"))
        status = status_of(diagnostic)
        human.append(f"  <{_clean(rcpt)}>: {diagnostic}")
        per_rcpt += [
            "",
            f"Final-Recipient: rfc822; {_clean(rcpt)}",
            "Action: failed",
            f"Status: {status}",
        ]
        if diagnostic[:3].isdigit():
            per_rcpt.append(f"Diagnostic-Code: smtp; {diagnostic}")
    human += ["", "The original message's headers follow; its body was not kept.", ""]
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{_clean(original.mail_from)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(now.astimezone(UTC))}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {mta}",
        f"Arrival-Date: {arrival}",
        *per_rcpt,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(head).encode("ascii") + b"\r\n"
    return text + original_headers(message) + f"\r\n--{boundary}--\r\n".encode("ascii")


def dsn_envelope(original: Envelope, dsn_id: str, received: float, size: int) -> Envelope:
    """The spool envelope of the DSN for `original`: null sender, one recipient (the sender).

    The DSN travels the other way: to an internal sender it is inbound mail for them (their
    principal, the one outbound rows named); to an external sender it is outbound. It is not
    archived again (its content is headers of a message already archived when it was a
    subject's)."""
    outbound_original = original.direction == "outbound"
    principal = next(iter(original.principals.values()), None) if outbound_original else None
    return Envelope(
        id=dsn_id,
        mail_from="",
        rcpts=[original.mail_from],
        received=received,
        size=size,
        client_ip="",
        helo=None,
        direction="inbound" if outbound_original else "outbound",
        principals={original.mail_from: principal},
        is_dsn=True,
        notice_version=original.notice_version,
    )

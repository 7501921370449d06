"""The spool envelope: what the relay knows of a message, and its delivery state.

One JSON object per spooled message (`ID.json`). `new_id()` makes the time-ordered spool ids;
`Envelope.from_json` parses a file and raises `SpoolError` naming the problem, never content.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields

ID_RE = re.compile(r"^[0-9a-z]{8,40}$")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(value: int, width: int) -> str:
    out = []
    while value:
        value, digit = divmod(value, 36)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out)).rjust(width, "0")


def new_id() -> str:
    """A unique spool id, time-ordered: base36 nanoseconds (13 chars) + 6 random chars."""
    return _base36(time.time_ns(), 13) + _base36(secrets.randbits(31), 6)


@dataclass
class Envelope:
    id: str  # spool id, unique, [0-9a-z]+ (time-ordered)
    mail_from: str  # as given ("" = null sender)
    rcpts: list[str]
    received: float  # POSIX seconds: end of DATA (the policy instant)
    size: int  # DATA payload bytes (after dot-unstuffing, before Received:)
    client_ip: str
    helo: str | None = None
    auth_user: str | None = None
    tls_version: str | None = None
    direction: str = "inbound"  # "outbound" (internal sender) | "inbound"
    principals: dict[str, str | None] = field(default_factory=dict)  # per rcpt: row principal
    message_id_sha256: str | None = None
    refs: list[str] = field(default_factory=list)  # authorisations it was archived for
    record_ids: list[str] = field(default_factory=list)  # archive records of subject copies
    is_dsn: bool = False
    notice_version: str | None = None
    # delivery state, owned by mail-delivery:
    attempts: int = 0
    next_try: float = 0.0
    pending: list[str] = field(default_factory=list)  # rcpts not yet delivered/bounced
    client_port: int | None = None
    server_ip: str | None = None  # the relay's side of the client's connection
    server_port: int | None = None
    bounced: list[str] = field(default_factory=list)  # rcpts finally failed (DSN owed)
    delivering: bool = False  # set before DATA; found set at start = possible duplicate
    queued_rows: bool = False  # the `queued` rows are known durable (see delivery.py)
    dsn_sent: bool = False  # the DSN for `bounced` was spooled (or is not owed)
    failures: dict[str, str] = field(default_factory=dict)  # rcpt -> final reply (for the DSN)
    msg_len: int = -1  # length of ID.msg, set by the spool
    msg_sha256: str = ""  # SHA-256 of ID.msg, set by the spool

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Parse an envelope file; raises SpoolError naming the problem (never the content)."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SpoolError(f"envelope is not JSON ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise SpoolError("envelope is not a JSON object")
        known = {f.name for f in fields(cls)}
        missing = {"id", "mail_from", "rcpts", "received", "size", "client_ip"} - raw.keys()
        if missing:
            raise SpoolError(f"envelope lacks {', '.join(sorted(missing))}")
        try:
            env = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError:
            raise SpoolError("envelope has fields of the wrong shape") from None
        _check_shape(env)
        return env


def _check_shape(env: Envelope) -> None:
    checks: list[tuple[bool, str]] = [
        (isinstance(env.id, str) and bool(ID_RE.fullmatch(env.id)), "id"),
        (isinstance(env.mail_from, str), "mail_from"),
        (isinstance(env.rcpts, list) and all(isinstance(r, str) for r in env.rcpts), "rcpts"),
        (isinstance(env.pending, list) and all(r in env.rcpts for r in env.pending), "pending"),
        (isinstance(env.bounced, list) and all(r in env.rcpts for r in env.bounced), "bounced"),
        (isinstance(env.received, int | float), "received"),
        (isinstance(env.size, int), "size"),
        (isinstance(env.attempts, int) and env.attempts >= 0, "attempts"),
        (isinstance(env.next_try, int | float), "next_try"),
        (isinstance(env.record_ids, list), "record_ids"),
        (isinstance(env.refs, list), "refs"),
        (isinstance(env.principals, dict), "principals"),
        (isinstance(env.failures, dict), "failures"),
    ]
    for ok, name in checks:
        if not ok:
            raise SpoolError(f"envelope field {name} is malformed")


class SpoolError(Exception):
    """The spool could not store or read a message; the text never holds content."""

"""Subjects' copies: the exact message bytes and the envelope, into each authorisation's archive.

Per reference two records (docs/archive-format.md, Mail): kind `message`, the DATA payload exactly
as the client sent it (after dot-unstuffing; without the relay's Received line), and kind
`envelope`, a small JSON object (spool id, envelope sender and recipients, client, HELO, AUTH
user, TLS version, direction, the Received line the relay prepended, the policy instant).

Runs in a worker thread (`asyncio.to_thread` by the handler): a 64 MiB encryption never blocks the
event loop. A failure is returned per reference, never raised: the caller still accepts and relays
the message (see `handler`), audits the gap and counts it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from store.clock import format_utc


class RecordSinkLike(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self, *, aborted: bool = False) -> str: ...


class ArchiveLike(Protocol):
    def open_record(
        self, ref: str, channel: str, principal: str | None, ts: datetime | str, kind: str
    ) -> Any: ...


CHUNK = 1024 * 1024


@dataclass
class ArchiveResult:
    refs: list[str] = field(default_factory=list)  # archived whole
    record_ids: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # ref -> reason (no content)


def envelope_record(envelope: Any, received_line: bytes, at: datetime) -> bytes:
    body = {
        "spool_id": envelope.id,
        "mail_from": envelope.mail_from,
        "rcpts": list(envelope.rcpts),
        "client_ip": envelope.client_ip,
        "helo": envelope.helo,
        "auth_user": envelope.auth_user,
        "tls_version": envelope.tls_version,
        "direction": envelope.direction,
        "received": format_utc(at),
        "size": envelope.size,
        "received_line": received_line.decode("utf-8", "replace"),
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _one(
    archive: ArchiveLike, ref: str, principal: str, at: datetime, kind: str, data: bytes
) -> str:
    sink = archive.open_record(ref, "email", principal, at, kind)
    try:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            sink.write(view[start : start + CHUNK])
    except BaseException:
        with contextlib.suppress(Exception):  # the write error is the one reported
            sink.close(aborted=True)
        raise
    return str(sink.close())


def archive_copies(
    archive: ArchiveLike,
    targets: list[tuple[str, str]],
    payload: bytes,
    envelope_json: bytes,
    at: datetime,
) -> ArchiveResult:
    """Write the message and envelope records for each (ref, subject principal)."""
    result = ArchiveResult()
    for ref, principal in targets:
        try:
            message_id = _one(archive, ref, principal, at, "message", payload)
            envelope_id = _one(archive, ref, principal, at, "envelope", envelope_json)
        except Exception as exc:  # any failure is a gap, never a refusal
            result.failed[ref] = _reason(exc)
            continue
        result.refs.append(ref)
        result.record_ids += [message_id, envelope_id]
    return result


def _reason(exc: Exception) -> str:
    """The failure's class and (for store errors, which carry no content) its message."""
    from store import StoreError

    if isinstance(exc, StoreError | OSError):
        return f"{type(exc).__name__}: {exc}"[:300]
    return type(exc).__name__

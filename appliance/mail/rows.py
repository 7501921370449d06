"""`email` metadata rows: one per recipient per outcome event, envelope only.

Every column of the `email` schema (store/schemas.py) comes from the spool envelope and the
event; no header value (the subject, the Message-ID itself) and no body ever reaches a row.
The relay and the delivery worker hand the rows to `MetadataWriter.append_nowait`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from appliance.mail.spool import Envelope

OUTCOMES = ("queued", "delivered", "deferred", "bounced")


def _community_id(env: Envelope) -> str | None:
    if not (env.client_ip and env.server_ip and env.client_port and env.server_port):
        return None
    with contextlib.suppress(Exception):  # an unparsable address: the column stays null
        import communityid

        flow = communityid.FlowTuple.make_tcp(
            env.client_ip, env.server_ip, env.client_port, env.server_port
        )
        return str(communityid.CommunityID().calc(flow))
    return None


def _ts(value: float | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(value, UTC)


def email_rows(
    envelope: Envelope,
    outcome: str,
    *,
    rcpts: list[str],
    gateway: str,
    ts: float | datetime,
    smtp_code: int | None = None,
    smtp_status: str | None = None,
    attempt: int = 0,
    upstream: str | None = None,
) -> list[dict[str, Any]]:
    """One row per recipient in `rcpts` for `outcome` (queued, delivered, deferred, bounced)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"email outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    when = _ts(ts)
    cid = _community_id(envelope)
    rows = []
    for rcpt in rcpts:
        rows.append(
            {
                "ts": when,
                "uid": envelope.id,
                "gateway": gateway,
                "principal": envelope.principals.get(rcpt),
                "client_ip": envelope.client_ip or None,
                "client_port": envelope.client_port,
                "server_ip": envelope.server_ip,
                "server_port": envelope.server_port,
                "outcome": outcome,
                "direction": envelope.direction,
                "mail_from": envelope.mail_from,
                "rcpt_to": rcpt,
                "size": envelope.size,
                "message_id_sha256": envelope.message_id_sha256,
                "helo": envelope.helo,
                "auth_user": envelope.auth_user,
                "tls_version": envelope.tls_version,
                "upstream": upstream,
                "smtp_code": smtp_code,
                "smtp_status": smtp_status,
                "attempt": min(attempt, 65535),
                "is_dsn": envelope.is_dsn,
                "notice_version": envelope.notice_version,
                "refs": list(envelope.refs),
                "record_ids": list(envelope.record_ids),
                "community_id": cid,
            }
        )
    return rows

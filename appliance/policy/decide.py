"""`decide`: metadata only, or full capture under which authorisations. Pure: no I/O, no clock.

Every channel asks `decide(snapshot, principal, channel, at, server_name=...)` with the instant
DECISIONS.md fixes (web: the request's start; email: the end of DATA; packets: the packet's
timestamp). The answer lists every authorisation that is active at `at` for that principal and
channel; a server on the do-not-decrypt list is opened only for authorisations that say so.
A stale snapshot (the registry out of reach for too long) authorises nothing: metadata only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from appliance.policy.model import Channel, Decision

if TYPE_CHECKING:
    from appliance.policy.snapshot import Snapshot


def decide(
    snapshot: Snapshot,
    principal: str | None,
    channel: Channel | str,
    at: datetime,
    *,
    server_name: str | None = None,
) -> Decision:
    """Decide for one principal, channel and instant. `principal` None (unresolved) is never
    recorded in full. `at` must be time-zone aware (a naive value is taken as UTC)."""
    chan = Channel(channel)
    when = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    dnd = server_name is not None and snapshot.is_do_not_decrypt(server_name)
    if principal is None or snapshot.stale:
        return Decision(False, (), None, chan, when, dnd)
    refs = tuple(
        auth.ref
        for auth in snapshot.for_subject(principal)
        if chan in auth.channels and auth.active_at(when) and (not dnd or auth.open_do_not_decrypt)
    )
    return Decision(bool(refs), refs, principal, chan, when, dnd)

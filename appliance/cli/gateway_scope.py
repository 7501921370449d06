"""`[web] transparent_scope = "subjects"`: keep the nftables subject sets equal to the current
addresses of principals with an active `web` authorisation.

`subject_addresses(snapshot, at)` is pure: every IP lease in the identity map whose address
resolves, at `at`, to a principal with an active `web` authorisation (an address whose leases
conflict resolves to nobody and is left out: the proxy would not record it either).

`ScopeSync` is the daemon's loop body: each `step()` (every `INTERVAL` seconds) recomputes the
addresses from the policy snapshot (which `SnapshotSource` reloads within a second of a grant, a
cancellation or an identity import) and the clock (leases begin and end with time), and loads the
sets when they differ; every `VERIFY_EVERY` seconds it also reads the sets back, so sets flushed
or a table replaced behind its back are refilled. A change is in force within about 2 s.

Both failure directions are safe: an address missing from the set is forwarded by the kernel
(metadata only, from the capture path), and an address wrongly in it reaches the proxy, which
decides by identity as always. A stale snapshot (registry unreadable) authorises nobody, so the
sets empty. Nothing here logs or audits an address or a count of them: either would tell an
operator that somebody is being monitored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from appliance.cli import gateway_rules
from appliance.policy.model import Channel
from appliance.policy.snapshot import Snapshot

INTERVAL = 0.5  # seconds between recomputations
VERIFY_EVERY = 2.0  # seconds between reading the sets back from the kernel (one `nft` call)


def subject_addresses(snapshot: Snapshot, at: datetime) -> frozenset[str]:
    """The addresses held at `at` by principals with an active web authorisation."""
    subjects = snapshot.subjects_at(at, Channel.WEB)
    if not subjects:
        return frozenset()
    identity: Any = snapshot.identity
    rows = getattr(identity, "rows", ())
    found = set()
    for row in rows:
        if row.kind != "ip" or row.principal not in subjects:
            continue
        if identity.resolve_ip(row.value, at) == row.principal:
            found.add(row.value)
    return frozenset(found)


class ScopeSync:
    """Recompute and load the subject sets; `step()` returns True when it loaded them."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        now: Callable[[], datetime],
        log: Callable[[str], None],
        *,
        load: Callable[[frozenset[str]], None] = lambda a: gateway_rules.sync_sets(a),
        read: Callable[[], set[str]] = gateway_rules.set_members,
    ) -> None:
        self.current = current
        self.now = now
        self.log = log
        self.load = load
        self.read = read
        self.loaded: frozenset[str] | None = None  # what we last loaded successfully
        self.last_verify = 0.0
        self.error: str | None = None
        self.loads = 0

    def _failed(self, message: str) -> None:
        if message != self.error:  # once per distinct failure, not every half second
            self.log(f"subject sets not updated: {message} (retrying)")
        self.error = message

    def step(self) -> bool:
        wanted = subject_addresses(self.current(), self.now())
        due = time.monotonic() - self.last_verify >= VERIFY_EVERY
        try:
            if due and self.loaded is not None:
                self.last_verify = time.monotonic()
                if self.read() != set(self.loaded):
                    self.loaded = None  # replaced or flushed behind our back: reload
            if wanted == self.loaded:
                return False
            self.load(wanted)
        except gateway_rules.RulesError as exc:
            self._failed(str(exc))
            self.loaded = None
            return False
        if self.error is not None:
            self.log("subject sets updated again")
            self.error = None
        self.loaded = wanted
        self.last_verify = time.monotonic()
        self.loads += 1
        return True

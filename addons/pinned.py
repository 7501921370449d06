"""Pinned clients: after a client refused our certificate, pass its next connection through.

A subject's app that pins its server's certificate fails the TLS handshake once we intercept.
We fail open to privacy, not to breakage: the refusal is recorded (`client_tls_refused`), and the
next connection from that client IP to that server name within `[web]
pinned_client_window_seconds` is passed through unopened, its row saying `pinned_fallback`.
The memory is bounded (oldest entries dropped first) and holds only IP, name and a time.
"""

from __future__ import annotations

from collections import OrderedDict


class PinnedClients:
    """(client IP, server name) pairs whose last interception the client refused."""

    def __init__(self, window_seconds: float, max_entries: int = 65_536) -> None:
        self.window = window_seconds
        self.max_entries = max_entries
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def refused(self, client_ip: str, server_name: str, now: float) -> None:
        """Remember that `client_ip` refused our certificate for `server_name` at `now`."""
        if self.window <= 0:
            return
        key = (client_ip, server_name.lower())
        self._until.pop(key, None)
        self._until[key] = now + self.window
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def pass_through(self, client_ip: str, server_name: str, now: float) -> bool:
        """True if a connection from `client_ip` to `server_name` at `now` must be passed."""
        key = (client_ip, server_name.lower())
        until = self._until.get(key)
        if until is None:
            return False
        if now > until:
            del self._until[key]
            return False
        return True

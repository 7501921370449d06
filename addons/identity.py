"""`Identity`: who the client of a proxy connection is (first of our addons; web contract 1).

Three ways, from `[web] mode` and `[web] auth`:

- explicit proxy with authentication (`auth=True`, `users` the current users file): the
  client must send `Proxy-Authorization: Basic` with a user and password of the users file
  (appliance/policy/users.py) on its CONNECT, and on every plain-HTTP request (which carries
  it anyway). Missing or wrong credentials get `407 Proxy Authentication Required` with
  `Proxy-Authenticate: Basic realm=...`, and nothing goes upstream. A CONNECT's user holds for
  every request inside that tunnel. The user resolves to a principal through the identity map
  (`snapshot.resolve(username=...)`); an unknown user gives `principal=None` with `proxy_user`
  kept (never a subject).
- explicit without authentication, and transparent: the principal holding the client's IP in
  the identity map at the connection's start (`client_connected`, what the per-connection TLS
  decision uses), re-resolved at each request's start (a lease may end on a keep-alive
  connection; the per-request re-check then sees it).

Privacy: the `Proxy-Authorization` header is removed from every request before any later addon
sees it (so it is neither archived nor forwarded upstream: the subject's proxy password is not
evidence), and the password is kept nowhere: we never fill `flow.metadata["proxyauth"]` as
mitmproxy's proxyauth addon would. bcrypt (about 250 ms) runs in a worker thread, never on the
event loop; the users file caches verified pairs briefly (see users.py). A client address
with `FAILURE_LIMIT` wrong passwords within `FAILURE_WINDOW` seconds is refused without a check
until its failures age out (pairs verified recently still pass).
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, http

from addons.state import ConnState, conn_state
from appliance.policy.snapshot_data import Snapshot
from appliance.policy.users import UsersFile
from store.clock import Clock

REALM = "lbm-gateway"
AUTH_HEADER = "Proxy-Authorization"
MODES = ("explicit", "transparent")
FAILURE_LIMIT = 10  # wrong passwords from one client address within FAILURE_WINDOW...
FAILURE_WINDOW = 60.0  # ...seconds, after which it gets 407 without a bcrypt check


@dataclass
class IdentityCounts:
    """Counters for status/metrics: numbers only, never names."""

    auth_failed: int = 0
    auth_missing: int = 0
    unresolved: int = 0
    by_ip: int = 0
    by_user: int = 0
    throttled: int = 0


def parse_basic(value: str) -> tuple[str, str] | None:
    """(user, password) of a `Basic` credential, or None if it is not one. The password may
    contain colons (split on the first one only, as RFC 7617 says)."""
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(parts[1].strip().encode("ascii"), strict_mode=True)
        text = decoded.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        return None
    return user, password


def client_ip(client: connection.Client) -> str:
    """The client's address as the identity map writes it (IPv4-mapped IPv6 unwrapped)."""
    host = str(client.peername[0]) if client.peername else ""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def auth_required_response() -> http.Response:
    return http.Response.make(
        407,
        b"<html><head><title>407 Proxy Authentication Required</title></head>"
        b"<body><h1>407 Proxy Authentication Required</h1></body></html>\n",
        {
            "Proxy-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"',
            "Content-Type": "text/html; charset=utf-8",
        },
    )


class FailureThrottle:
    """Wrong passwords per client address over a sliding window. Past the limit the address is
    refused without a bcrypt check, so guessing is slowed and a flood of bad credentials cannot
    fill the worker threads that verify everybody's passwords."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def blocked(self, ip: str) -> bool:
        times = self._recent(ip, time.monotonic())
        return times is not None and len(times) >= self.limit

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:  # bounded: forget everyone's stale entries
            for key in list(self._failures):
                self._recent(key, now)
        self._failures.setdefault(ip, deque()).append(now)


class Identity:
    """Sets `ConnState.principal`, `proxy_user` and `identified` for each client connection."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        clock: Clock,
        mode: str,
        users: Callable[[], UsersFile | None] | None = None,
        *,
        auth: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown web mode {mode!r} (expected one of {', '.join(MODES)})")
        if auth and mode != "explicit":
            raise ValueError("proxy authentication needs explicit mode, not transparent")
        if auth and users is None:
            raise ValueError("proxy authentication needs the users file")
        self.snapshot = snapshot
        self.clock = clock
        self.mode = mode
        self.users = users
        self.auth = auth  # [web] auth: require proxy authentication (explicit mode only)
        self.counts = IdentityCounts()
        self._tunnels: set[str] = set()  # client ids authenticated by a CONNECT
        self.throttle = FailureThrottle()

    # -- by IP -------------------------------------------------------------------------------

    def _resolve_ip(self, client: connection.Client) -> ConnState:
        state = conn_state(client)
        principal = self.snapshot().resolve(ip=client_ip(client), at=self.clock.now())
        state.principal = principal
        state.proxy_user = None
        state.identified = True
        self.counts.by_ip += 1
        if principal is None:
            self.counts.unresolved += 1
        return state

    def client_connected(self, client: connection.Client) -> None:
        if not self.auth:
            self._resolve_ip(client)
        else:
            conn_state(client)  # not identified until its credentials are checked

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.discard(client.id)

    # -- by proxy authentication ---------------------------------------------------------------

    async def _authenticate(self, flow: http.HTTPFlow) -> bool:
        """Check the flow's credentials; on success fill the ConnState, else answer 407.
        The header is removed either way."""
        value = flow.request.headers.get(AUTH_HEADER)
        if AUTH_HEADER in flow.request.headers:
            del flow.request.headers[AUTH_HEADER]
        credentials = parse_basic(value) if value else None
        users = self.users() if self.users is not None else None
        if credentials is None or users is None:
            self.counts.auth_missing += 1
            flow.response = auth_required_response()
            return False
        user, password = credentials
        ip = client_ip(flow.client_conn)
        ok = users.verified_recently(user, password)
        if not ok and self.throttle.blocked(ip):
            del password, credentials
            self.counts.throttled += 1
            flow.response = auth_required_response()
            return False
        if not ok:
            ok = await asyncio.to_thread(users.verify, user, password)
        del password, credentials
        if not ok:
            self.counts.auth_failed += 1
            self.throttle.failed(ip)
            flow.response = auth_required_response()
            return False
        state = conn_state(flow.client_conn)
        principal = self.snapshot().resolve(username=user, at=self.clock.now())
        state.principal = principal
        state.proxy_user = user
        state.identified = True
        self.counts.by_user += 1
        if principal is None:
            self.counts.unresolved += 1
        return True

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self.auth:
            if AUTH_HEADER in flow.request.headers:
                del flow.request.headers[AUTH_HEADER]
            return
        if await self._authenticate(flow):
            self._tunnels.add(flow.client_conn.id)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # answered already (by an earlier addon)
        if not self.auth:
            if AUTH_HEADER in flow.request.headers:
                del flow.request.headers[AUTH_HEADER]
            self._resolve_ip(flow.client_conn)  # the lease at this request's start
            return
        if flow.client_conn.id in self._tunnels:
            # inside an authenticated CONNECT tunnel: the CONNECT's user holds; a header sent
            # inside the tunnel is for nobody downstream either
            if AUTH_HEADER in flow.request.headers:
                del flow.request.headers[AUTH_HEADER]
            return
        await self._authenticate(flow)

"""Our aiosmtpd `SMTP` protocol: the banner, lines up to 1 MiB, the connection limit, graceful
shutdown and AUTH through `auth.SmtpAuthenticator`.

- Banner: `220-GATEWAY ESMTP lbm-gateway`, then `220 NOTICE TEXT (notice VERSION)`: the
  acceptable-use notice of `[notice]` and its version, on the greeting every client sees.
- Lines: aiosmtpd answers `500 Line too long` past 1001 bytes (1000 with CRLF, plus a stuffed
  dot); DECISIONS.md wants lines of up to 1 MiB to pass, so the limit is 1 MiB with its CRLF,
  plus a stuffed dot. The whole message is
  held in memory (aiosmtpd), bounded by `[smtp] max_message_bytes`.
- PIPELINING is advertised by the handler's EHLO hook (aiosmtpd reads commands in order from a
  buffered stream, so pipelined commands work); BDAT/CHUNKING is not offered (aiosmtpd has none).
- Connections beyond `[smtp] max_connections` get `421 4.7.0` and are closed.
- `Sessions.shutdown()`: sessions in the middle of DATA finish (their message is answered and
  spooled); every other session gets `421 4.3.2` and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult

from appliance.mail.auth import SmtpAuthenticator
from appliance.mail.refusals import Counters

# aiosmtpd logs every command line (addresses) at INFO and every DATA line (message content) at
# DEBUG on the "mail.log" logger: privacy forbids both, whatever the logging configuration.
_AIOSMTPD_LOG = logging.getLogger("mail.log")
_AIOSMTPD_LOG.disabled = True
_AIOSMTPD_LOG.propagate = False
_AIOSMTPD_LOG.addFilter(lambda record: False)

MAX_LINE = 1024 * 1024  # a line with its CRLF
LINE_LIMIT = MAX_LINE + 1  # + a stuffed leading dot
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later\r\n"
BUSY_REPLY = "421 4.7.0 Too many connections, try again later"


class Sessions:
    """The live protocol instances of one server, for the connection limit and shutdown."""

    def __init__(self, max_connections: int, counters: Counters) -> None:
        self.max_connections = max_connections
        self.counters = counters
        self.live: set[RelaySMTP] = set()
        self.closing = False

    def admit(self, proto: RelaySMTP) -> bool:
        if self.closing or len(self.live) >= self.max_connections:
            self.counters.add("connections_refused")
            return False
        self.live.add(proto)
        return True

    def discard(self, proto: RelaySMTP) -> None:
        self.live.discard(proto)

    async def shutdown(self, grace: float = 30.0) -> None:
        """Refuse new work: idle sessions get 421 now, sessions in DATA finish first (up to
        `grace` seconds, then they are cut: their message was not answered, so the client
        keeps it)."""
        self.closing = True
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            for proto in list(self.live):
                if not proto.in_data:
                    proto.close_with(SHUTDOWN_REPLY)
            busy = [p for p in self.live if p.in_data]
            if not busy or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for proto in list(self.live):
            proto.close_with(SHUTDOWN_REPLY)
        self.live.clear()


class RelaySMTP(SMTP):
    line_length_limit = LINE_LIMIT

    def __init__(
        self,
        handler: Any,
        *,
        sessions: Sessions,
        authenticator: SmtpAuthenticator | None,
        banner: list[str],
        **kwargs: Any,
    ) -> None:
        # aiosmtpd collects auth_* methods at construction: without an authenticator, no AUTH
        exclude = ["PLAIN", "LOGIN"] if authenticator is None else []
        exclude += ["CRAM-MD5"]
        super().__init__(handler, auth_exclude_mechanism=exclude, **kwargs)
        self.sessions = sessions
        self.smtp_auth = authenticator
        self.banner = banner
        self.in_data = False
        self._greeted = False
        self._admitted = False

    # -- connection bookkeeping ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            self._admitted = self.sessions.admit(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        super().connection_lost(error)

    def close_with(self, reply: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(Exception):
            transport.write(reply)  # type: ignore[attr-defined]
        transport.close()

    async def _handle_client(self) -> None:
        if not self._admitted:
            self._greeted = True
            with contextlib.suppress(ConnectionError):
                await self.push(BUSY_REPLY)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        if not self._greeted:
            self._greeted = True  # the first reply is the greeting: ours, with the notice
            lines = self.banner
            text = "".join(f"220-{line}\r\n" for line in lines[:-1]) + f"220 {lines[-1]}"
            await super().push(text)
            return
        await super().push(status)

    # -- DATA: marked, so shutdown lets it finish ------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
        if self.sessions.closing:
            self.close_with(SHUTDOWN_REPLY)

    # -- AUTH through the users file, verified off the event loop -------------------------------
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        assert self.smtp_auth is not None
        return await self.smtp_auth.plain(self, args)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        assert self.smtp_auth is not None
        return await self.smtp_auth.login(self, args)


def banner_lines(gateway: str, notice_text: str, notice_version: str) -> list[str]:
    """The greeting: the gateway, then the acceptable-use notice and its version (one line,
    control characters removed so the notice cannot forge a reply)."""
    clean = "".join(c if c.isprintable() else " " for c in notice_text).strip()
    return [f"{gateway} ESMTP lbm-gateway", f"{clean} (notice {notice_version})"]

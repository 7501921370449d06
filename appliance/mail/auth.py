"""SMTP AUTH PLAIN and LOGIN against the users file (DECISIONS.md, Wave 2: users file).

Offered only after STARTTLS (aiosmtpd's `auth_require_tls`, always on: there is no option to turn
it off). A user may authenticate only when the users file flags them `smtp`, and only if their
user name resolves to a principal through the identity map: the relay then requires every MAIL
FROM of the session to resolve to that same principal (`handler`). bcrypt verification runs in a
worker thread, never in the event loop. Credentials are never logged or kept: the session keeps
the user name and principal only.
"""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, AuthResult

from appliance.mail.refusals import Counters

INVALID = "535 5.7.8 Authentication credentials invalid"
MAX_AUTH_FIELD = 1024


class Users(Protocol):
    """What the relay needs of `appliance.policy.users.UsersFile`."""

    def verify(self, user: str, password: str) -> bool: ...

    def can_relay_smtp(self, user: str) -> bool: ...


@dataclass(frozen=True)
class AuthIdentity:
    """`session.auth_data` after a successful AUTH (no password)."""

    login: str
    principal: str


class SmtpAuthenticator:
    """Checks credentials; `users()` returns the current users file (None: AUTH refused) and
    `principal_of(user)` resolves a user name through the current identity map."""

    def __init__(
        self,
        users: Callable[[], Users | None],
        principal_of: Callable[[str], str | None],
        counters: Counters,
    ) -> None:
        self.users = users
        self.principal_of = principal_of
        self.counters = counters

    async def check(self, login: bytes, password: bytes) -> AuthResult:
        try:
            user = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail()
        if not user or len(user) > MAX_AUTH_FIELD or len(secret) > MAX_AUTH_FIELD:
            return self._fail()
        users = self.users()
        if users is None:
            return self._fail()
        ok = await asyncio.get_running_loop().run_in_executor(None, users.verify, user, secret)
        if not ok or not users.can_relay_smtp(user):
            return self._fail()
        principal = self.principal_of(user)
        if principal is None:
            self.counters.add("auth_unresolved")
            return self._fail()
        self.counters.add("auth_ok")
        return AuthResult(success=True, auth_data=AuthIdentity(user, principal))

    def _fail(self) -> AuthResult:
        self.counters.add("auth_failed")
        return AuthResult(success=False, handled=False, message=INVALID)

    # -- the two mechanisms (RFC 4616, and the LOGIN draft), with aiosmtpd's helpers ---------
    async def plain(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
            if blob is None:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        authz, login, password = parts
        if authz and authz != login:  # acting for another user is not offered
            return self._fail()
        return await self.check(login, password)

    async def login(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            user = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if user is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            user = _b64(args[1])
            if user is None:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self.check(user, password)


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None

"""Sessions to one next hop reused across messages (`UpstreamPool`), over
`appliance.mail.smtp_client.SmtpConnection`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.mail.smtp_client import DataResult, SmtpClientError, SmtpConnection


class UpstreamPool:
    """Sessions to one next hop, reused across messages (up to `size` kept idle).

    A reused session the server has meanwhile dropped fails before DATA; the message is then
    tried once more on a fresh session (never after DATA was written: that could deliver twice).
    """

    def __init__(self, make: Callable[[], SmtpConnection], *, size: int, idle_seconds: float = 20):
        self._make = make
        self._idle: list[tuple[float, SmtpConnection]] = []
        self.size = size
        self.idle_seconds = idle_seconds
        self.opened = 0

    @property
    def name(self) -> str:
        return self._make().name

    async def _fresh(self) -> SmtpConnection:
        conn = self._make()
        await conn.open()
        self.opened += 1
        return conn

    async def send(self, mail_from: str, rcpts: list[str], message: bytes) -> DataResult:
        loop = asyncio.get_running_loop()
        conn: SmtpConnection | None = None
        while self._idle and conn is None:
            since, candidate = self._idle.pop()
            if candidate.is_open and loop.time() - since < self.idle_seconds:
                conn = candidate
            else:
                await candidate.close()
        reused = conn is not None
        if conn is None:
            conn = await self._fresh()
        try:
            result = await conn.send(mail_from, rcpts, message)
        except SmtpClientError as exc:
            await conn.close()
            if not (reused and exc.before_data and exc.reply is None):
                raise
            conn = await self._fresh()
            try:
                result = await conn.send(mail_from, rcpts, message)
            except SmtpClientError:
                await conn.close()
                raise
        if conn.is_open and len(self._idle) < self.size:
            self._idle.append((loop.time(), conn))
        else:
            await conn.close()
        return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, conn in idle:
            await conn.close()

"""Delivery settings, the transports they make, and per-recipient outcome classification.

`DeliverySettings.from_config` reads the `[smtp]` delivery options once (an option that cannot
work raises `DeliveryConfigError`, one line naming it); `main_transport()` is the upstream
(`upstream_pool.UpstreamPool` over `SmtpConnection`, STARTTLS verified) or the local `Maildrop`;
`classify` turns one transaction's replies into delivered / deferred / bounced recipients.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.mail.maildrop import Maildrop
from appliance.mail.smtp_client import (
    DataResult,
    Reply,
    SmtpConnection,
    tls_context,
)
from appliance.mail.upstream_pool import UpstreamPool


class ConfigLike(Protocol):
    def get(self, name: str) -> Any: ...


class Transport(Protocol):
    @property
    def name(self) -> str: ...

    async def send(self, mail_from: str, rcpts: list[str], message: bytes) -> DataResult: ...

    async def close(self) -> None: ...


class DeliveryConfigError(Exception):
    """A delivery option that cannot work (e.g. an unreadable password file)."""


@dataclass(frozen=True)
class DeliverySettings:
    upstream_host: str
    upstream_port: int
    starttls: str
    ca_file: str
    user: str
    password: str
    retry_initial: float
    retry_max: float
    lifetime: float
    return_route: tuple[str, int] | None
    maildrop: Path
    concurrency: int
    helo_name: str

    @classmethod
    def from_config(cls, cfg: ConfigLike) -> DeliverySettings:
        password = ""
        password_file = str(cfg.get("smtp.upstream_password_file") or "")
        if password_file:
            try:
                password = Path(password_file).read_text().strip()
            except OSError as exc:
                raise DeliveryConfigError(
                    f"[smtp] upstream_password_file {password_file}: {exc.strerror}"
                ) from None
        route = str(cfg.get("smtp.return_route") or "")
        parsed: tuple[str, int] | None = None
        if route:
            host, _, port = route.rpartition(":")
            parsed = (host.strip("[]"), int(port))
        return cls(
            upstream_host=str(cfg.get("smtp.upstream_host") or ""),
            upstream_port=int(cfg.get("smtp.upstream_port")),
            starttls=str(cfg.get("smtp.upstream_starttls")),
            ca_file=str(cfg.get("smtp.upstream_ca_file") or ""),
            user=str(cfg.get("smtp.upstream_user") or ""),
            password=password,
            retry_initial=float(cfg.get("smtp.retry_initial_seconds")),
            retry_max=float(cfg.get("smtp.retry_max_seconds")),
            lifetime=float(cfg.get("smtp.lifetime_hours")) * 3600.0,
            return_route=parsed,
            maildrop=Path(str(cfg.get("smtp.maildrop"))),
            concurrency=int(cfg.get("smtp.delivery_concurrency")),
            helo_name=socket.getfqdn() or "localhost",
        )

    def backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_initial * 2 ** max(0, attempts - 1)))

    def transport(self, host: str, port: int) -> Transport:
        try:
            tls = tls_context(self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise DeliveryConfigError(
                f"[smtp] upstream_ca_file {self.ca_file}: cannot load ({reason})"
            ) from None

        def make() -> SmtpConnection:
            return SmtpConnection(
                host,
                port,
                helo_name=self.helo_name,
                starttls=self.starttls,
                tls=tls,
                user=self.user or None,
                password=self.password or None,
            )

        return UpstreamPool(make, size=self.concurrency)

    def main_transport(self) -> Transport:
        if self.upstream_host:
            return self.transport(self.upstream_host, self.upstream_port)
        return Maildrop(self.maildrop)


@dataclass
class Outcome:
    delivered: list[tuple[str, Reply]]
    deferred: list[tuple[str, Reply | None, str]]  # rcpt, reply, status
    bounced: list[tuple[str, Reply | None, str]]


def classify(rcpts: list[str], result: DataResult) -> Outcome:
    """Per-recipient outcome of one transaction."""
    out = Outcome([], [], [])
    for rcpt in rcpts:
        reply = result.rcpt_replies.get(rcpt)
        if reply is None:
            out.deferred.append((rcpt, None, "4.4.2"))
            continue
        if reply.code >= 300:
            target = out.bounced if reply.code >= 500 else out.deferred
            target.append((rcpt, reply, reply.status or f"{reply.code // 100}.0.0"))
            continue
        data = result.data_reply
        if data is None:
            out.deferred.append((rcpt, None, "4.4.2"))
        elif data.code < 300:
            out.delivered.append((rcpt, data))
        else:
            target = out.bounced if data.code >= 500 else out.deferred
            target.append((rcpt, data, data.status or f"{data.code // 100}.0.0"))
    return out

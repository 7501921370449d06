"""The relay's aiosmtpd handler: HELO/EHLO, MAIL, RCPT and the end of DATA.

- EHLO advertises PIPELINING (aiosmtpd 1.4.6 does not) and never CHUNKING.
- HELO/EHLO names: printable ASCII without spaces, at most 255 characters (`501 5.5.2`).
- Addresses: at most 254 characters with a local part of at most 64 (RFC 5321 4.5.3.1); a
  non-ASCII address needs the SMTPUTF8 parameter, and invalid UTF-8 is refused even with it
  (`553 5.6.7`); the null sender `<>` is accepted (bounces).
- Relay control, at RCPT: a client in `[smtp] allowed_clients` or an authenticated session may
  relay; anyone else gets `554 5.7.1` (the gateway is never an open relay).
- AUTH (see `auth`): once authenticated, MAIL FROM must resolve through the identity map to the
  authenticated principal, else `550 5.7.1`.
- Too many recipients: `452 4.5.3` (RFC 5321 4.5.3.1.10); too large: aiosmtpd's `552`.
- End of DATA: a payload holding `<LF>.<LF>`, `<LF>.<CR><LF>` or `<CR><LF>.<LF>` (SMTP smuggling)
  is refused `550 5.5.2` and counted. Otherwise the policy instant is now: the parties are
  classified, `decide` asked for each internal party, subjects' copies archived (in a thread),
  the message with one Received line spooled durably (`Spool.accept`), `queued` rows appended,
  the delivery worker woken, and only then `250`.

Nothing of a message (subject, headers, body) and no address is logged; refusals are counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from appliance.mail import archiving, message, parties
from appliance.mail.auth import AuthIdentity
from appliance.mail.refusals import Counters
from appliance.mail.spool import Envelope, Spool, SpoolError, new_id
from appliance.policy.decide import decide
from appliance.policy.snapshot import Snapshot
from store.audit import Action
from store.clock import Clock

MAX_ADDRESS = 254
MAX_LOCAL = 64
MAX_HELO = 255
_SMUGGLING = re.compile(rb"(?<!\r)\n\.\r?\n|\r\n\.\n")
_HELO_RE = re.compile(r"[\x21-\x7e]{1,255}")
_DOMAIN_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s@\[\]<>()\\,;:\"]+)")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class RelaySettings:
    gateway: str
    internal_domains: list[str]
    allowed_clients: list[Network]
    max_recipients: int
    notice_version: str | None = None


class Audit:
    """What the handler needs of the audit log, with the actor bound."""

    def __init__(self, log: Any, actor: str) -> None:
        self.log = log
        self.actor = actor

    def gap(self, ref: str, spool_id: str, reason: str) -> None:
        self.log.append(
            Action.CAPTURE_GAP,
            self.actor,
            refs=(ref,),
            channel="email",
            writer="smtp",
            spool_id=spool_id,
            reason=reason,
        )


def parse_networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def smuggling(payload: bytes) -> bool:
    """True if `payload` holds an end-of-data sequence another server may accept."""
    return _SMUGGLING.search(payload) is not None or payload.startswith((b".\n", b".\r\n"))


def address_problem(address: str, smtputf8: bool) -> str | None:
    """The reply refusing `address`, or None if it is acceptable (`<>` is handled by callers)."""
    if len(address) > MAX_ADDRESS:
        return "501 5.1.3 Address too long"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "553 5.1.3 Error: malformed address (local@domain required)"
    if len(local) > MAX_LOCAL:
        return "501 5.1.3 Local part too long"
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in address):  # surrogate-escaped: not UTF-8
        return "553 5.6.7 Address is not valid UTF-8"
    if not address.isascii() and not smtputf8:
        return "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    if any(not c.isprintable() for c in address):
        return "553 5.1.3 Error: malformed address"
    if not _DOMAIN_RE.fullmatch(domain) or any(not label for label in domain.split(".")):
        return "553 5.1.2 Error: malformed domain"
    return None


class RelayHandler:
    """aiosmtpd handler hooks; one instance serves every session of the relay."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        snapshot: Callable[[], Snapshot],
        spool: Spool,
        clock: Clock,
        counters: Counters,
        audit: Audit | None = None,
        archive: archiving.ArchiveLike | None = None,
        queued_rows: Callable[[Envelope, datetime], Sequence[dict[str, Any]]] | None = None,
        append_row: Callable[[dict[str, Any]], bool] | None = None,
        wake: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.spool = spool
        self.clock = clock
        self.counters = counters
        self.audit = audit
        self.archive = archive
        self.queued_rows = queued_rows
        self.append_row = append_row
        self.wake = wake

    async def handle_exception(self, error: Exception) -> str:
        """A bug or an unexpected failure in a session: answered 451 (the client keeps the
        message), counted; the exception text is never shown or logged (it may hold content)."""
        return self.refuse("internal_error", "451 4.3.0 Internal error, try again later")

    def refuse(self, kind: str, reply: str) -> str:
        self.counters.add(kind)
        return reply

    # -- greeting --------------------------------------------------------------------------------
    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str
    ) -> str:
        if not _HELO_RE.fullmatch(hostname):
            return self.refuse("bad_helo", "501 5.5.2 Syntax: HELO hostname (printable, no spaces)")
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not _HELO_RE.fullmatch(hostname):
            session.host_name = None
            return [self.refuse("bad_helo", "501 5.5.2 Syntax: EHLO hostname (printable)")]
        session.host_name = hostname
        out = [r for r in responses if "CHUNKING" not in r.upper()]
        return [*out[:-1], "250-PIPELINING", out[-1]]

    # -- envelope ----------------------------------------------------------------------------
    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        smtputf8 = bool(envelope.smtp_utf8)
        if address != "<>":
            problem = address_problem(address, smtputf8)
            if problem is not None:
                return self.refuse("bad_address", problem)
        who = session.auth_data
        if isinstance(who, AuthIdentity):
            owner = None if address == "<>" else self._resolve(address)
            if owner != who.principal:
                return self.refuse(
                    "auth_sender_mismatch",
                    "550 5.7.1 Sender address does not belong to the authenticated user",
                )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self._may_relay(session):
            return self.refuse("relay_denied", "554 5.7.1 Relay access denied")
        if address == "<>":
            return self.refuse("bad_address", "553 5.1.3 Error: null recipient")
        problem = address_problem(address, bool(envelope.smtp_utf8))
        if problem is not None:
            return self.refuse("bad_address", problem)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return self.refuse("too_many_recipients", "452 4.5.3 Too many recipients")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def _may_relay(self, session: Session) -> bool:
        if isinstance(session.auth_data, AuthIdentity):
            return True
        peer = session.peer
        host = peer[0] if isinstance(peer, tuple) else None
        try:
            ip = ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.settings.allowed_clients)

    def _resolve(self, address: str) -> str | None:
        try:
            return self.snapshot().identity.resolve(email=address)
        except ValueError:
            return None

    # -- end of DATA -------------------------------------------------------------------------
    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        payload = envelope.original_content
        assert isinstance(payload, bytes)
        if smuggling(payload):
            return self.refuse("smuggling", "550 5.5.2 Bare LF before or after the end-of-data dot")
        now = self.clock.now()  # the policy instant: the end of DATA, before 250
        snap = self.snapshot()
        mail_from = "" if envelope.mail_from in ("<>", None) else str(envelope.mail_from)
        rcpts = [str(r) for r in envelope.rcpt_tos]
        found = parties.classify(
            mail_from, rcpts, self.settings.internal_domains, self._resolver(snap)
        )
        if found.unresolved:
            self.counters.add("unresolved_address", found.unresolved)
        who = session.auth_data
        ssl_object = (session.ssl or {}).get("ssl_object") if session.ssl else None
        peer = session.peer
        local = server.transport.get_extra_info("sockname") if server.transport else None
        env = Envelope(
            id=new_id(),
            mail_from=mail_from,
            rcpts=rcpts,
            received=now.timestamp(),
            size=len(payload),
            client_ip=str(peer[0]) if isinstance(peer, tuple) else "",
            helo=session.host_name or None,
            auth_user=who.login if isinstance(who, AuthIdentity) else None,
            tls_version=ssl_object.version() if ssl_object is not None else None,
            direction=found.direction,
            principals=found.principals,
            message_id_sha256=message.message_id_sha256(payload),
            notice_version=self.settings.notice_version,
            client_port=int(peer[1]) if isinstance(peer, tuple) else None,
            server_ip=str(local[0]) if isinstance(local, tuple) else None,
            server_port=int(local[1]) if isinstance(local, tuple) else None,
        )
        received = message.received_line(
            helo=env.helo,
            client_ip=env.client_ip,
            gateway=self.settings.gateway,
            protocol=message.protocol_name(
                esmtp=bool(session.extended_smtp), tls=ssl_object is not None, auth=bool(who)
            ),
            spool_id=env.id,
            rcpts=rcpts,
            when=now,
        )
        targets = [
            (ref, principal)
            for principal in found.internal_parties
            for ref in decide(snap, principal, "email", now).refs
        ]
        if targets:
            await self._archive(env, targets, payload, received, now)
        try:
            await self.spool.accept(env, received + payload)
        except SpoolError:
            # The client keeps the message and retries; a subject's copy already archived stays
            # (it is what was offered at that instant).
            return self.refuse("spool_failed", "451 4.3.0 Temporary failure, try again later")
        self._rows(env, now)
        if self.wake is not None:
            self.wake(env.id)
        self.counters.add("accepted")
        return f"250 2.0.0 OK queued as {env.id}"

    def _resolver(self, snap: Snapshot) -> Callable[[str], str | None]:
        def resolve(address: str) -> str | None:
            try:
                return snap.identity.resolve(email=address)
            except ValueError:
                return None

        return resolve

    async def _archive(
        self,
        env: Envelope,
        targets: list[tuple[str, str]],
        payload: bytes,
        received: bytes,
        now: datetime,
    ) -> None:
        """Subjects' copies before 250. Decided here: if archiving fails the message is still
        accepted and relayed (refusing would make the client retry, alerting the subject, or
        drop the mail of everyone else on it); the gap is audited `capture_gap` with the
        reference and spool id, never content, and counted `archive_gap`."""
        if self.archive is None:
            result = archiving.ArchiveResult(failed={ref: "no archive" for ref, _ in targets})
        else:
            blob = archiving.envelope_record(env, received, now)
            result = await asyncio.to_thread(
                archiving.archive_copies, self.archive, targets, payload, blob, now
            )
        env.refs = result.refs
        env.record_ids = result.record_ids
        for ref, reason in result.failed.items():
            self.counters.add("archive_gap")
            if self.audit is not None:
                try:
                    await asyncio.to_thread(self.audit.gap, ref, env.id, reason)
                except Exception:  # counted
                    self.counters.add("audit_failed")

    def _rows(self, env: Envelope, now: datetime) -> None:
        if self.queued_rows is None or self.append_row is None:
            return
        for row in self.queued_rows(env, now):
            if not self.append_row(row):
                self.counters.add("row_refused")

"""A small asyncio SMTP client that writes DATA itself, so line endings are never rewritten.

smtplib and aiosmtplib normalise line endings (and smtplib blocks the event loop), so the
delivery worker uses this instead: EHLO (HELO if refused), STARTTLS with certificate
verification ("required": refuse to go on without it; "optional": used when offered, verified
too: there is no insecure mode), AUTH PLAIN when configured (only over TLS), MAIL and one RCPT
per recipient (pipelined when the server offers PIPELINING), then DATA: the message is
dot-stuffed only where a line starts after CRLF, its bytes are otherwise untouched, and it ends
with `<CRLF>.<CRLF>`.

A connection is reused for several messages (`RSET` between them; with PIPELINING, RSET,
MAIL, RCPT and DATA go in one write). Errors are `SmtpClientError`
with `temporary` set for connection, TLS and protocol failures (retried) and the server's reply
when there is one; their text names the host and the step, never message content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

_STATUS_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # the reply lines' text, joined by "\n" (the server's words)

    @property
    def status(self) -> str | None:
        """The enhanced status code (RFC 3463) at the start of the text, if any."""
        match = _STATUS_RE.match(self.text)
        return match.group(0) if match else None

    def line(self) -> str:
        first = self.text.split("\n", 1)[0]
        return f"{self.code} {first}"[:200]


class SmtpClientError(Exception):
    """A delivery attempt failed before or around a reply (never holds message content)."""

    def __init__(
        self,
        message: str,
        *,
        reply: Reply | None = None,
        temporary: bool | None = None,
        before_data: bool = True,
    ):
        super().__init__(message)
        self.reply = reply
        if temporary is None:  # a transaction's reply decides; no reply: a session failure
            temporary = reply is None or reply.code < 500
        self.temporary = temporary
        self.before_data = before_data  # nothing of the message was written yet


@dataclass
class DataResult:
    """Per-recipient replies to RCPT and the DATA reply (None when no recipient was accepted)."""

    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_reply: Reply | None = None


def dot_stuff(payload: bytes) -> bytes:
    """Stuff a dot at the start of every line beginning after CRLF (and at the very start)."""
    stuffed = payload.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def data_block(message: bytes) -> bytes:
    """The bytes written after `354`: the stuffed message, CRLF if it lacks one, `.CRLF`."""
    stuffed = dot_stuff(message)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def tls_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """Verification always on; `ca_file` adds trust anchors (tests) to the system's."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _xtext_addr(address: str) -> str:
    if any(c in address for c in "\r\n<>"):
        raise SmtpClientError("address holds characters SMTP cannot carry", temporary=False)
    return address


class SmtpConnection:
    """One SMTP session to a next hop. Use `open()`, then `send()` any number of times."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        helo_name: str,
        starttls: str = "required",
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if starttls not in ("required", "optional"):
            raise ValueError("starttls must be 'required' or 'optional'")
        self.host = host
        self.port = port
        self.helo_name = helo_name
        self.starttls_mode = starttls
        self.tls = tls
        self.user = user
        self.password = password
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.encrypted = False
        self.messages_sent = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._dirty = False  # a transaction was started on this session

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # -- wire --------------------------------------------------------------------------------
    async def _read_reply(self) -> Reply:
        assert self._reader is not None
        lines: list[str] = []
        while True:
            try:
                raw = await asyncio.wait_for(self._reader.readline(), self.timeout)
            except TimeoutError:
                raise SmtpClientError(f"{self.name}: no reply within {self.timeout:g}s") from None
            except (OSError, ValueError) as exc:
                raise SmtpClientError(f"{self.name}: connection failed ({exc})") from None
            if not raw:
                raise SmtpClientError(f"{self.name}: connection closed by the server")
            if len(raw) > MAX_REPLY_LINE or len(lines) > MAX_REPLY_LINES:
                raise SmtpClientError(f"{self.name}: reply too long")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
                raise SmtpClientError(f"{self.name}: malformed reply")
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return Reply(int(text[:3]), "\n".join(lines))

    async def _write(self, data: bytes) -> None:
        assert self._writer is not None
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.timeout)
        except TimeoutError:
            raise SmtpClientError(f"{self.name}: write timed out") from None
        except OSError as exc:
            raise SmtpClientError(f"{self.name}: connection failed ({exc})") from None

    async def command(self, line: str) -> Reply:
        await self._write(line.encode("utf-8") + b"\r\n")
        return await self._read_reply()

    # -- session -----------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=2**20), self.timeout
            )
        except TimeoutError:
            raise SmtpClientError(f"{self.name}: connect timed out") from None
        except OSError as exc:
            raise SmtpClientError(f"{self.name}: cannot connect ({exc.strerror or exc})") from None
        try:
            await self._greet()
        except BaseException:
            await self.close()  # never leak a half-opened session
            raise

    async def _greet(self) -> None:
        banner = await self._read_reply()
        if banner.code != 220:
            # a refusing or misconfigured next hop defers mail, it never bounces it
            raise SmtpClientError(
                f"{self.name}: banner {banner.line()}", reply=banner, temporary=True
            )
        await self._ehlo()
        if "STARTTLS" in self.extensions:
            await self._starttls()
        elif self.starttls_mode == "required":
            raise SmtpClientError(f"{self.name}: STARTTLS required but not offered")
        if self.user:
            await self._auth()

    async def _ehlo(self) -> None:
        reply = await self.command(f"EHLO {self.helo_name}")
        if reply.code == 250:
            self.extensions = {}
            for item in reply.text.split("\n")[1:]:
                keyword, _, params = item.partition(" ")
                self.extensions[keyword.upper()] = params
            return
        reply = await self.command(f"HELO {self.helo_name}")
        if reply.code != 250:
            await self.close()
            raise SmtpClientError(
                f"{self.name}: HELO refused: {reply.line()}", reply=reply, temporary=True
            )
        self.extensions = {}

    async def _starttls(self) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            await self.close()
            raise SmtpClientError(f"{self.name}: STARTTLS refused: {reply.line()}")
        assert self._writer is not None
        context = self.tls or tls_context(None)
        try:
            await asyncio.wait_for(
                self._writer.start_tls(context, server_hostname=self.host), self.timeout
            )
        except ssl.SSLCertVerificationError as exc:
            await self.close()
            raise SmtpClientError(
                f"{self.name}: certificate not trusted ({exc.verify_message})"
            ) from None
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            await self.close()
            raise SmtpClientError(f"{self.name}: TLS handshake failed ({exc})") from None
        self.encrypted = True
        await self._ehlo()

    async def _auth(self) -> None:
        if not self.encrypted:
            await self.close()
            raise SmtpClientError(f"{self.name}: will not send credentials without TLS")
        token = base64.b64encode(
            b"\0" + (self.user or "").encode() + b"\0" + (self.password or "").encode()
        ).decode()
        reply = await self.command(f"AUTH PLAIN {token}")
        if reply.code != 235:
            await self.close()
            raise SmtpClientError(
                f"{self.name}: AUTH refused: {reply.line()}", reply=reply, temporary=True
            ) from None

    async def send(self, mail_from: str, rcpts: list[str], message: bytes) -> DataResult:
        """One transaction. Returns per-recipient RCPT replies and the DATA reply. Raises
        SmtpClientError when the session fails (the connection is then closed) or MAIL FROM is
        refused (`reply` set: the code decides temporary or permanent)."""
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={len(message)}")
        if "8BITMIME" in self.extensions and not message.isascii():
            params.append("BODY=8BITMIME")
        if "SMTPUTF8" in self.extensions and not (mail_from + "".join(rcpts)).isascii():
            params.append("SMTPUTF8")
        mail_cmd = f"MAIL FROM:<{_xtext_addr(mail_from)}>" + "".join(f" {p}" for p in params)
        rcpt_cmds = [f"RCPT TO:<{_xtext_addr(r)}>" for r in rcpts]
        if "PIPELINING" in self.extensions:
            return await self._send_pipelined(mail_cmd, rcpt_cmds, rcpts, message)
        if self._dirty:
            await self._rset(await self.command("RSET"))
        self._dirty = True
        result = DataResult()
        mail_reply = await self.command(mail_cmd)
        replies = []
        if mail_reply.code == 250:
            replies = [await self.command(c) for c in rcpt_cmds]
        if mail_reply.code != 250:
            raise SmtpClientError(
                f"{self.name}: MAIL FROM refused: {mail_reply.line()}", reply=mail_reply
            )
        result.rcpt_replies = dict(zip(rcpts, replies, strict=True))
        if not any(r.code in (250, 251) for r in replies):
            return result
        reply = await self.command("DATA")
        if reply.code != 354:
            result.data_reply = reply
            return result
        result.data_reply = await self._write_data(message)
        return result

    async def _rset(self, reply: Reply) -> None:
        if reply.code != 250:
            await self.close()
            raise SmtpClientError(f"{self.name}: RSET refused: {reply.line()}")

    async def _write_data(self, message: bytes) -> Reply:
        """After 354: the message, then the final reply. A failure here may have delivered."""
        try:
            await self._write(data_block(message))
            reply = await self._read_reply()
        except SmtpClientError as exc:
            await self.close()
            raise SmtpClientError(str(exc), before_data=False) from None
        self.messages_sent += 1
        return reply

    async def _send_pipelined(
        self, mail_cmd: str, rcpt_cmds: list[str], rcpts: list[str], message: bytes
    ) -> DataResult:
        """RFC 2920: [RSET], MAIL, RCPT..., DATA in one write, then the replies in order."""
        dirty, self._dirty = self._dirty, True
        commands = (["RSET"] if dirty else []) + [mail_cmd, *rcpt_cmds, "DATA"]
        await self._write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
        if dirty:
            await self._rset(await self._read_reply())
        mail_reply = await self._read_reply()
        replies = [await self._read_reply() for _ in rcpts]
        data_reply = await self._read_reply()
        accepted = mail_reply.code == 250 and any(r.code in (250, 251) for r in replies)
        if data_reply.code == 354 and not accepted:
            # a server that says 354 with no valid recipient gets an empty message, ignored
            await self._write(b".\r\n")
            await self._read_reply()
        if mail_reply.code != 250:
            raise SmtpClientError(
                f"{self.name}: MAIL FROM refused: {mail_reply.line()}", reply=mail_reply
            )
        result = DataResult(dict(zip(rcpts, replies, strict=True)))
        if not accepted:
            return result
        if data_reply.code != 354:
            result.data_reply = data_reply
            return result
        result.data_reply = await self._write_data(message)
        return result

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            if not writer.is_closing():
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(writer.drain(), 2)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)

"""Real SMTP parts for the mail tests: a recording upstream server and a raw client.

`RecordingUpstream` is a real aiosmtpd `SMTP` server in its own thread and event loop (started with
`loop.create_server` on port 0: aiosmtpd's `Controller` cannot use port 0). It records, per
message, the envelope and the exact bytes aiosmtpd hands over (`envelope.original_content`: after
dot-unstuffing, line endings and bare LFs kept). It can answer 4xx/5xx at RCPT or DATA on demand,
be stopped and started again on the same port (an upstream that is down), offer STARTTLS with a
given certificate and require AUTH.

`send_raw` / `RawClient` talk SMTP over a plain socket and write DATA themselves: a dot is stuffed
only at the start of a line after CRLF (as the wire does; smtplib also stuffs after a bare LF,
which aiosmtpd does not unstuff), the payload's line endings are sent untouched and the message ends
with `<CRLF>.<CRLF>`. `expected_content(payload)` is what a conforming server receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

MIB = 1024 * 1024


@dataclass(frozen=True)
class Recorded:
    """One message the upstream answered 250 to."""

    mail_from: str
    rcpts: list[str]
    content: bytes  # envelope.original_content, exact
    mail_options: list[str]
    peer: str
    helo: str | None
    tls: bool
    auth_user: str | None
    at: float  # time.monotonic() when recorded


class _UpstreamSMTP(SMTP):
    # Lines up to 1 MiB must pass (DECISIONS.md); aiosmtpd's default refuses lines over 1001 bytes.
    line_length_limit = 2 * MIB


class _Handler:
    def __init__(self, owner: RecordingUpstream) -> None:
        self.owner = owner

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.owner.rcpt_replies.get(address, self.owner.rcpt_reply)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.owner.data_delay:
            await asyncio.sleep(self.owner.data_delay)
        reply = self.owner.data_reply
        if reply is not None:
            self.owner._refused_data += 1
            return reply
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.owner._record(
            Recorded(
                mail_from=envelope.mail_from or "",
                rcpts=list(envelope.rcpt_tos),
                content=bytes(envelope.original_content or b""),
                mail_options=list(envelope.mail_options),
                peer=str(session.peer),
                helo=session.host_name,
                tls=session.ssl is not None,
                auth_user=user,
                at=time.monotonic(),
            )
        )
        return "250 2.0.0 OK recorded"


class RecordingUpstream:
    """A real SMTP server recording what it is sent. Use as a context manager or call
    `start()`/`close()`. Set `rcpt_reply`/`data_reply` (e.g. `"451 4.3.0 try later"`,
    `"554 5.7.1 no"`) to refuse, or use `fail_rcpt`/`fail_data`/`accept`; `rcpt_replies` refuses
    single recipient addresses."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "upstream.test",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        require_starttls: bool = False,
        auth_users: dict[str, str] | None = None,
        data_size_limit: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.rcpt_replies: dict[str, str] = {}  # per recipient address, before `rcpt_reply`
        self.data_delay: float = 0.0
        self.auth_users = auth_users
        self.data_size_limit = data_size_limit
        self._tls: ssl.SSLContext | None = None
        if tls_cert is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
        self.require_starttls = require_starttls
        self._messages: list[Recorded] = []
        self._refused_data = 0
        self.connections = 0
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._protocols: set[SMTP] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RecordingUpstream:
        """Listen (again): on port 0 the first time, then on the same port."""
        if self._server is not None:
            return self
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        fut.result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(
            self._factory, host=self.host, port=self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {}
        if self.auth_users is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        proto = _UpstreamSMTP(
            _Handler(self),
            hostname=self.hostname,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=True,
            tls_context=self._tls,
            require_starttls=self.require_starttls,
            auth_require_tls=self._tls is not None,
            loop=self._loop,
            **kwargs,
        )
        self._protocols.add(proto)
        return proto

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        users = self.auth_users or {}
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if users.get(user) == password:
                return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def stop(self) -> None:
        """Stop listening and drop open connections (the upstream is down); `start()` again
        listens on the same port."""
        if self._server is None:
            return

        async def down() -> None:
            assert self._server is not None
            self._server.close()
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.abort()
            self._protocols.clear()
            await self._server.wait_closed()
            self._server = None

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(timeout=10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- modes -----------------------------------------------------------------------------------

    def fail_rcpt(self, reply: str = "451 4.3.0 upstream says later") -> None:
        self.rcpt_reply = reply

    def fail_data(self, reply: str = "451 4.3.0 upstream says later") -> None:
        self.data_reply = reply

    def accept(self) -> None:
        self.rcpt_reply = None
        self.data_reply = None
        self.rcpt_replies.clear()

    # -- records ---------------------------------------------------------------------------------

    def _record(self, msg: Recorded) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Recorded]:
        with self._cond:
            return list(self._messages)

    @property
    def refused_data(self) -> int:
        """How many DATA commands were answered with `data_reply`."""
        return self._refused_data

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Recorded]:
        """Wait until at least `n` messages were recorded; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"upstream got {len(self._messages)} messages, expected {n}, "
                        f"within {timeout:.0f}s"
                    )
                self._cond.wait(left)
            return list(self._messages)


# -- the raw client ----------------------------------------------------------------------------


def dot_stuff(payload: bytes) -> bytes:
    """Stuff a dot at the start of every line that begins after CRLF (and at the very start)."""
    stuffed = payload.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def data_block(payload: bytes) -> bytes:
    """The bytes written after `354`: stuffed payload, a CRLF if it lacks one, then `.CRLF`."""
    stuffed = dot_stuff(payload)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def expected_content(payload: bytes) -> bytes:
    """What a server receives (dot-unstuffed) for `payload` sent by `RawClient`."""
    return payload if payload.endswith(b"\r\n") else payload + b"\r\n"


@dataclass
class Reply:
    code: int
    text: str  # all lines' text, joined by "\n"


@dataclass
class SendResult:
    """Replies of one transaction. `code` is the reply that decided the message: the one after
    the end of DATA when DATA was sent, otherwise the first refusal."""

    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None  # the reply to DATA (354 when it went on)
    final: Reply | None = None  # the reply after <CRLF>.<CRLF>
    replies: list[tuple[str, Reply]] = field(default_factory=list)

    @property
    def code(self) -> int | None:
        if self.final is not None:
            return self.final.code
        for _, reply in self.replies:
            if reply.code >= 400:
                return reply.code
        return None

    @property
    def text(self) -> str:
        if self.final is not None:
            return self.final.text
        for _, reply in self.replies:
            if reply.code >= 400:
                return reply.text
        return ""

    @property
    def accepted(self) -> bool:
        return self.final is not None and self.final.code == 250


class SmtpProtocolError(Exception):
    """The server broke the dialogue (closed the connection, or sent no valid reply)."""


class RawClient:
    """One SMTP connection over a plain socket; DATA is written by hand."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self.banner = self.read_reply()
        self.ehlo_reply: Reply | None = None

    # -- I/O ---------------------------------------------------------------------------------

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SmtpProtocolError(f"connection closed by server (pending {self._buf!r})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def read_reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = self._readline()
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpProtocolError(f"not an SMTP reply: {line[:200]!r}")
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return Reply(int(line[:3]), "\n".join(lines))

    def send(self, data: bytes) -> None:
        # The server may answer (and close) before it read everything: its reply is next.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def command(self, line: str | bytes) -> Reply:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.read_reply()

    # -- dialogue ----------------------------------------------------------------------------

    def ehlo(self, name: str = "client.test") -> Reply:
        self.ehlo_reply = self.command(f"EHLO {name}")
        return self.ehlo_reply

    @property
    def extensions(self) -> set[str]:
        if self.ehlo_reply is None:
            return set()
        return {ln.split()[0].upper() for ln in self.ehlo_reply.text.split("\n")[1:] if ln}

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> Reply:
        reply = self.command("STARTTLS")
        if reply.code != 220:
            return reply
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self._buf = b""
        return reply

    def auth_plain(self, user: str, password: str) -> Reply:
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        return self.command(f"AUTH PLAIN {token}")

    def send_message(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        payload: bytes,
        *,
        pipelining: bool = False,
        mail_params: str = "",
    ) -> SendResult:
        result = SendResult()
        mail_cmd = f"MAIL FROM:<{mail_from}>" + (f" {mail_params}" if mail_params else "")
        cmds = [mail_cmd] + [f"RCPT TO:<{r}>" for r in rcpts]
        if pipelining:
            self.send(b"".join(c.encode("utf-8") + b"\r\n" for c in [*cmds, "DATA"]))
            replies = [self.read_reply() for _ in range(len(cmds) + 1)]
        else:
            replies = []
            for c in cmds:
                replies.append(self.command(c))
                if replies[0].code != 250:
                    break
        result.mail = replies[0]
        result.replies.append(("MAIL", replies[0]))
        for r in replies[1 : 1 + len(rcpts)]:
            result.rcpts.append(r)
            result.replies.append(("RCPT", r))
        if pipelining:
            result.data = replies[-1]
        elif result.mail.code == 250 and any(r.code == 250 for r in result.rcpts):
            result.data = self.command("DATA")
        if result.data is not None:
            result.replies.append(("DATA", result.data))
            if result.data.code == 354:
                self.send(data_block(payload))
                result.final = self.read_reply()
                result.replies.append(("END", result.final))
        if result.final is None and result.mail.code == 250:
            self.command("RSET")
        return result

    def quit(self) -> None:
        with contextlib.suppress(OSError, SmtpProtocolError):
            self.command("QUIT")
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_raw(
    host: str,
    port: int,
    mail_from: str,
    rcpts: Iterable[str],
    payload: bytes,
    *,
    ehlo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    pipelining: bool = False,
    tls_hostname: str | None = None,
    timeout: float = 60.0,
) -> SendResult:
    """One message on one connection: EHLO, [STARTTLS, EHLO], [AUTH PLAIN], MAIL, RCPT..., DATA
    written by hand, QUIT. Returns the replies (`.code` decides; `.accepted` is a 250 after DATA).
    """
    with RawClient(host, port, timeout=timeout) as client:
        client.ehlo(ehlo)
        if starttls is not None:
            reply = client.starttls(starttls, tls_hostname or host)
            if reply.code != 220:
                raise SmtpProtocolError(f"STARTTLS refused: {reply.code} {reply.text}")
            client.ehlo(ehlo)
        if auth is not None:
            reply = client.auth_plain(*auth)
            if reply.code != 235:
                result = SendResult()
                result.replies.append(("AUTH", reply))
                client.quit()
                return result
        result = client.send_message(mail_from, list(rcpts), payload, pipelining=pipelining)
        client.quit()
        return result


def split_received(content: bytes) -> tuple[bytes, bytes]:
    """(the first header field, the rest) of a relayed message. The field runs to the first
    CRLF not followed by a space or tab (a folded header continues)."""
    end = 0
    while True:
        at = content.find(b"\r\n", end)
        if at < 0:
            return content, b""
        end = at + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]


def is_one_received_field(prefix: bytes) -> bool:
    """`prefix` is exactly one (possibly folded) `Received:` header field, CRLF-terminated."""
    if not prefix.startswith(b"Received: ") or not prefix.endswith(b"\r\n"):
        return False
    lines = prefix[:-2].split(b"\r\n")
    return all(line[:1] in (b" ", b"\t") and b"\n" not in line for line in lines[1:]) and (
        b"\n" not in lines[0]
    )


def relayed_payload(content: bytes, payload: bytes) -> bool:
    """`content` (as the upstream got it) is one Received field followed by exactly `payload`.
    (The payload may itself start with white space, so the field's end is not always visible:
    this checks against the payload that was sent.)"""
    return content.endswith(payload) and is_one_received_field(
        content[: len(content) - len(payload)]
    )

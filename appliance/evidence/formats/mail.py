"""Email records into `mail/ID.eml` (one per message) and one `mail/mail.mbox`.

- kind `message`: the DATA payload exactly as the client sent it; its bytes are the `.eml`, byte
  for byte (`mail/REF_000001_3.eml` for record `REF/000001/3`), streamed to disk.
- kind `envelope`: the relay's JSON (sender, recipients, Received line...), written as it is to
  `mail/ID.envelope.json` and matched to its message: the latest message of the same reference
  with the same principal and `ts` whose length equals the envelope's `size` and that has no
  envelope yet (the relay writes the message, then its envelope, but other records may come
  between them when mail for the reference is concurrent).
- `mail/mail.mbox` is written at close from the `.eml` files, in record order, as
  `mailbox.mbox` writes bytes: a `From SENDER DATE` line (the envelope's sender, or
  `MAILER-DAEMON` for the null sender or a message without its envelope; the envelope's
  `received`, else the record's `ts`), the message with every line starting `From ` escaped to
  `>From ` (mboxo), a newline added if it lacks one, then an empty line. Streamed in pieces: a
  message is never held whole in memory.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from appliance.evidence.formats.files import OutFile, WrittenFile, safe_name

MBOX = "mail/mail.mbox"
ENVELOPE_MAX = 1 << 20  # an envelope is small JSON; a bigger one is kept as is, not parsed
PIECE = 1 << 20


@dataclass
class _Message:
    record_id: str
    path: str
    ref: str
    principal: str | None
    ts: str
    size: int = 0
    sender: str | None = None  # from the matched envelope ("" is the null sender)
    received: str | None = None


def _asctime(iso: str) -> str:
    try:
        at = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return time.asctime(time.gmtime(0))
    return time.asctime(at.utctimetuple())


def _from_line(msg: _Message) -> bytes:
    sender = msg.sender or "MAILER-DAEMON"
    sender = re.sub(r"[\s\x00-\x1f\x7f]", "_", sender)  # one token, never a line break
    return f"From {sender} {_asctime(msg.received or msg.ts)}\n".encode("utf-8", "replace")


class MailWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.damaged: list[str] = []
        self._messages: list[_Message] = []
        self._files: list[WrittenFile] = []
        self._out: OutFile | None = None
        self._header: dict[str, Any] = {}
        self._envelope: bytearray | None = None

    def begin(self, header: dict[str, Any]) -> None:
        self._header = header
        record_id = header["id"]
        kind = header.get("kind")
        suffix = ".eml" if kind == "message" else f".{kind}.json" if kind == "envelope" else ".bin"
        self._out = OutFile(self.out_dir, f"mail/{safe_name(record_id)}{suffix}")
        self._out.record_ids.append(record_id)
        self._envelope = bytearray() if kind == "envelope" else None

    def data(self, chunk: bytes) -> None:
        assert self._out is not None
        self._out.write(chunk)
        if self._envelope is not None:
            if len(self._envelope) + len(chunk) > ENVELOPE_MAX:
                self._envelope = None
            else:
                self._envelope += chunk

    def end(self, complete: bool) -> None:
        assert self._out is not None
        written = self._out.close()
        self._files.append(written)
        self._out = None
        h = self._header
        ref = str(h["id"]).split("/", 1)[0]
        if h.get("kind") == "message":
            msg = _Message(h["id"], written.path, ref, h.get("principal"), str(h.get("ts", "")))
            msg.size = written.size
            self._messages.append(msg)
        elif self._envelope is not None and complete:
            self._match(ref, h, bytes(self._envelope))
        self._envelope = None

    def _match(self, ref: str, header: dict[str, Any], blob: bytes) -> None:
        try:
            env = json.loads(blob)
            size, sender = env["size"], env["mail_from"]
        except (ValueError, KeyError, TypeError):
            return
        for msg in reversed(self._messages):
            if (
                msg.sender is None
                and msg.ref == ref
                and msg.principal == header.get("principal")
                and msg.ts == header.get("ts")
                and msg.size == size
            ):
                msg.sender = sender if isinstance(sender, str) else ""
                received = env.get("received")
                msg.received = received if isinstance(received, str) else None
                return

    def close(self) -> list[WrittenFile]:
        if self._messages:
            self._files.append(self._write_mbox())
        return self._files

    def _write_mbox(self) -> WrittenFile:
        out = OutFile(self.out_dir, MBOX)
        for msg in self._messages:
            out.record_ids.append(msg.record_id)
            out.write(_from_line(msg))
            with (self.out_dir / msg.path).open("rb") as fh:
                last = _copy_escaped(fh, out.write)
            out.write(b"\n\n" if last != b"\n" else b"\n")
        return out.close()


def _escape(buf: bytes, at_start: bool) -> bytes:
    out = buf.replace(b"\nFrom ", b"\n>From ")
    return b">" + out if at_start and out.startswith(b"From ") else out


def _copy_escaped(fh: BinaryIO, write: Callable[[bytes], object]) -> bytes:
    """Copy a message with every line that starts `From ` escaped, in pieces cut after a
    newline (a line longer than a piece is cut anywhere: only its start can need escaping).
    Returns the last byte written."""
    carry, at_start, last = b"", True, b"\n"
    while chunk := fh.read(PIECE):
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < max(PIECE, 5):
            carry = data  # too short to tell: wait for more
            continue
        if cut == 0:  # one long line: its start is settled
            write(_escape(data, at_start))
            carry, at_start, last = b"", False, data[-1:]
            continue
        write(_escape(data[:cut], at_start))
        carry, at_start, last = data[cut:], True, b"\n"
    if carry:
        write(_escape(carry, at_start))
        last = carry[-1:]
    return last

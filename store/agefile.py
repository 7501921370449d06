"""The age v1 file format (https://age-encryption.org/v1), X25519 recipients only, streaming.

Archives, wrapped segment keys and wrapped authorisation keys are age files, so an investigator
can open any of them with the standard `age` tool. This module is a small, dependency-light
implementation on `cryptography` (writing here; reading in `store.agefile_read`, re-exported
here), because archiving needs what the wrappers do not offer: a
*push* writer (`write(bytes)` as content arrives, `close()` at the end, never more than one
64 KiB chunk held) and a reader that returns the authenticated prefix of a file cut off by a crash,
flagged as truncated.

Format summary (see docs/archive-format.md): a text header with one `X25519` stanza per
recipient (ephemeral share; the 16-byte file key wrapped with ChaCha20-Poly1305 under
HKDF-SHA256(shared secret, salt = share || recipient, info "age-encryption.org/v1/X25519")),
an HMAC-SHA256 over the header keyed with HKDF(file key, info "header"); then a 16-byte nonce
and the payload in 64 KiB ChaCha20-Poly1305 chunks keyed with HKDF(file key, salt = nonce,
info "payload"), nonce = 11-byte big-endian counter || last-chunk flag.
Keys use age's Bech32 text form: `age1...` recipients, `AGE-SECRET-KEY-1...` identities.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from store.agefile_base import (
    CHUNK,
    MAX_HEADER,
    TAG,
    VERSION_LINE,
    X25519_INFO,
    AgeAuthenticationError,
    AgeError,
    AgeHeaderError,
    AgeHmacError,
    AgeNoMatchError,
    AgePayloadError,
    AgeTruncatedError,
    AgeUnsupportedError,
    b64,
    chunk_nonce,
    encode_identity,
    encode_recipient,
    generate,
    hkdf,
    identity_file_text,
    parse_identity,
    parse_identity_file,
    parse_recipient,
    public_of,
    raw_public,
    recipient_fingerprint,
    unb64,
)
from store.agefile_read import (
    ARMOR_BEGIN,
    AgeReader,
    decrypt_bytes,
    header_length,
    parse_header,
)

if TYPE_CHECKING:  # `cryptography` loads at first use (start-up: docs/startup.md)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

__all__ = [  # the base's names are part of this module's interface
    "ARMOR_BEGIN",
    "BATCH",
    "CHUNK",
    "MAX_HEADER",
    "TAG",
    "VERSION_LINE",
    "X25519_INFO",
    "AgeAuthenticationError",
    "AgeError",
    "AgeHeaderError",
    "AgeHmacError",
    "AgeNoMatchError",
    "AgePayloadError",
    "AgeReader",
    "AgeTruncatedError",
    "AgeUnsupportedError",
    "AgeWriter",
    "Output",
    "b64",
    "build_header",
    "chunk_nonce",
    "decrypt_bytes",
    "encode_identity",
    "encode_recipient",
    "encrypt_bytes",
    "generate",
    "header_length",
    "hkdf",
    "identity_file_text",
    "parse_header",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
    "public_of",
    "recipient_fingerprint",
    "unb64",
]


def build_header(file_key: bytes, recipients: Sequence[X25519PublicKey]) -> bytes:
    if not recipients:
        raise AgeError("no recipients")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    out = [VERSION_LINE + b"\n"]
    for recipient in recipients:
        eph = X25519PrivateKey.generate()
        share = raw_public(eph.public_key())
        rcpt = raw_public(recipient)
        shared = eph.exchange(recipient)
        wrap_key = hkdf(shared, share + rcpt, X25519_INFO)
        body = ChaCha20Poly1305(wrap_key).encrypt(b"\x00" * 12, file_key, None)
        out.append(b"-> X25519 " + b64(share) + b"\n" + b64(body) + b"\n")
    text = b"".join(out) + b"---"
    mac = hmac.new(hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
    return text + b" " + b64(mac) + b"\n"


class Output(Protocol):
    """Where an AgeWriter puts the file. An output that also has `write_many(list[bytes])`
    (for example one that calls os.writev) gets the sealed chunks in batches instead."""

    def write(self, data: bytes, /) -> object: ...


BATCH = 16  # sealed chunks handed over at once to an output with write_many (~1 MiB)


class AgeWriter:
    """Encrypts a stream to X25519 recipients, holding at most one chunk of plaintext between
    calls (and, within one `write`, at most BATCH sealed chunks on their way to the output).

    Every chunk that can be sealed is handed to the output before `write` returns; only the
    last, possibly partial, chunk waits in memory, because the last chunk is sealed differently.
    """

    def __init__(self, out: Output, recipients: Sequence[str | X25519PublicKey]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        keys = [parse_recipient(r) if isinstance(r, str) else r for r in recipients]
        self._out = out
        self._many = getattr(out, "write_many", None)
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        header = build_header(file_key, keys)
        self._aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
        self._buf = bytearray()
        self._counter = 0
        self._closed = False
        self.plaintext_bytes = 0
        out.write(header + nonce)
        self.header_bytes = len(header) + len(nonce)

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> bytes:
        if self._counter >= 1 << 88:
            raise AgeError("payload too long")
        # cryptography accepts any buffer here; its stub says bytes
        sealed = self._aead.encrypt(chunk_nonce(self._counter, last), chunk, None)  # type: ignore[arg-type]
        self._counter += 1
        return sealed

    def _emit(self, sealed: list[bytes]) -> None:
        if self._many is not None:
            self._many(sealed)
        else:
            for piece in sealed:
                self._out.write(piece)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise AgeError("write after close")
        view = memoryview(data).cast("B")
        size = len(view)
        self.plaintext_bytes += size
        buf = self._buf
        sealed: list[bytes] = []
        if buf:
            need = CHUNK - len(buf)
            if size <= need:
                buf += view
                return  # a full buffer may be the last chunk: seal only when more arrives
            buf += view[:need]
            view = view[need:]
            size -= need
            sealed.append(self._seal(buf, False))  # encrypt reads the buffer in place
            buf.clear()
        if size > CHUNK:
            # the hot loop for large writes: whole chunks straight from the caller's buffer
            if self._counter + size // CHUNK >= 1 << 88:
                raise AgeError("payload too long")
            encrypt, counter, pos = self._aead.encrypt, self._counter, 0
            try:
                while size - pos > CHUNK:
                    nonce = counter.to_bytes(11, "big") + b"\x00"
                    chunk = view[pos : pos + CHUNK]
                    sealed.append(encrypt(nonce, chunk, None))  # type: ignore[arg-type]
                    counter += 1
                    pos += CHUNK
                    if len(sealed) >= BATCH:
                        self._emit(sealed)
                        sealed = []
            finally:
                self._counter = counter
            view = view[pos:]
        if sealed:
            self._emit(sealed)
        buf += view

    def close(self) -> None:
        if self._closed:
            return
        self._emit([self._seal(self._buf, True)])
        self._buf.clear()
        self._closed = True

    @property
    def chunks_written(self) -> int:
        return self._counter


def encrypt_bytes(data: bytes, recipients: Sequence[str]) -> bytes:
    parts: list[bytes] = []

    class _Collect:
        def write(self, b: bytes, /) -> int:
            parts.append(bytes(b))
            return len(b)

    writer = AgeWriter(_Collect(), recipients)
    writer.write(data)
    writer.close()
    return b"".join(parts)

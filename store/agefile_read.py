"""Reading age v1 files (https://age-encryption.org/v1), X25519 identities only, streaming:
the header parsed with bounds (`parse_header`, `header_length`), the file key unwrapped, and the
payload's 64 KiB chunks authenticated one by one (`AgeReader`), returning the authenticated
prefix of a file cut off by a crash, flagged as truncated. `store.agefile` is the format's
namespace (it re-exports these); the format is summarised there and in docs/archive-format.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from store.agefile_base import (
    CHUNK,
    MAX_HEADER,
    TAG,
    VERSION_LINE,
    X25519_INFO,
    AgeAuthenticationError,
    AgeHeaderError,
    AgeHmacError,
    AgeNoMatchError,
    AgePayloadError,
    AgeTruncatedError,
    AgeUnsupportedError,
    chunk_nonce,
    hkdf,
    parse_identity,
    raw_public,
    unb64,
)

if TYPE_CHECKING:  # `cryptography` loads at first use (start-up: docs/startup.md)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_ARGUMENT = re.compile(rb"[\x21-\x7e]+")  # a stanza argument: one or more visible ASCII


def _read_line(fh: BinaryIO, budget: list[int]) -> bytes:
    line = fh.readline(budget[0] + 1)
    budget[0] -= len(line)
    if budget[0] < 0:
        raise AgeHeaderError("header: too long")
    if not line.endswith(b"\n"):
        raise AgeHeaderError("header: truncated")
    return line[:-1]


def _check_version(fh: BinaryIO, budget: list[int]) -> bytes:
    line = _read_line(fh, budget)
    if line == VERSION_LINE:
        return line
    if line.strip(b" \t\r") == ARMOR_BEGIN:
        raise AgeUnsupportedError("ASCII-armored age files are not supported")
    if line.rstrip(b"\r") == VERSION_LINE:
        raise AgeHeaderError("header: lines end with CR LF")
    if line.startswith(b"age-encryption.org/"):
        raise AgeHeaderError("header: unsupported age version")
    raise AgeHeaderError("not an age v1 file")


def parse_header(fh: BinaryIO) -> tuple[list[tuple[bytes, bytes]], bytes, bytes]:
    """Returns ([(share, body)] of X25519 stanzas, header text up to '---', mac).

    Every stanza must be well formed (arguments of visible ASCII, canonical base64 body); other
    stanza types are skipped (they are for other identity types), except scrypt, which must be
    the only stanza and is refused as unsupported.
    """
    budget = [MAX_HEADER]
    text = bytearray(_check_version(fh, budget) + b"\n")
    stanzas: list[tuple[bytes, bytes]] = []
    types: list[bytes] = []
    line = _read_line(fh, budget)
    while line.startswith(b"->"):
        text += line + b"\n"
        if not line.startswith(b"-> "):
            raise AgeHeaderError("header: stanza without a type")
        args = line[3:].split(b" ")
        if not all(_ARGUMENT.fullmatch(arg) for arg in args):
            raise AgeHeaderError("header: empty or invalid stanza argument")
        body = bytearray()
        while True:
            body_line = _read_line(fh, budget)
            text += body_line + b"\n"
            if len(body_line) > 64:
                raise AgeHeaderError("header: stanza line longer than 64 columns")
            body += unb64(body_line)
            if len(body_line) < 64:
                break
        types.append(args[0])
        if args[0] == b"X25519":
            share = unb64(args[1]) if len(args) == 2 else b""
            if len(share) != 32 or len(body) != 32:
                raise AgeHeaderError("header: malformed X25519 stanza")
            stanzas.append((share, bytes(body)))
        line = _read_line(fh, budget)
    if not types:
        raise AgeHeaderError("header: no recipient stanza")
    if b"scrypt" in types:
        if len(types) > 1:
            raise AgeHeaderError("header: an scrypt stanza must be the only stanza")
        raise AgeUnsupportedError("passphrase-encrypted (scrypt) age files are not supported")
    if not line.startswith(b"--- "):
        raise AgeHeaderError("header: missing MAC line")
    mac = unb64(line[4:])
    if len(mac) != 32:
        raise AgeHeaderError("header: the MAC is not 32 bytes")
    text += b"---"
    return stanzas, bytes(text), mac


def _unwrap(stanzas: list[tuple[bytes, bytes]], identities: Sequence[X25519PrivateKey]) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    for identity in identities:
        rcpt = raw_public(identity.public_key())
        for share, body in stanzas:
            try:
                shared = identity.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise AgeHeaderError("header: X25519 share is a low-order point") from None
            wrap_key = hkdf(shared, share + rcpt, X25519_INFO)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue
    raise AgeNoMatchError("no identity matched any of the file's recipients")


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


class AgeReader:
    """Decrypts an age file chunk by chunk, verifying each chunk before returning it.

    With `allow_truncated`, a file cut off after a whole chunk (or inside one) yields the
    authenticated prefix and sets `truncated`; otherwise a cut-off file raises AgeError.
    Errors are the kinds of `store.agefile_base`: AgeHeaderError, AgeUnsupportedError,
    AgeNoMatchError, AgeHmacError, then from `chunks()` AgePayloadError (AgeTruncatedError when
    only the end is missing, AgeAuthenticationError when a chunk fails authentication).
    Chunks that authenticate are yielded before an error about what follows them.
    """

    def __init__(
        self,
        fh: BinaryIO,
        identities: Sequence[X25519PrivateKey | str],
        *,
        allow_truncated: bool = False,
    ) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        keys = [parse_identity(i) if isinstance(i, str) else i for i in identities]
        stanzas, text, mac = parse_header(fh)
        file_key = _unwrap(stanzas, keys)
        expect = hmac.new(hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
        if not hmac.compare_digest(expect, mac):
            raise AgeHmacError("header MAC mismatch (file altered)")
        nonce = fh.read(16)
        self.truncated = False
        self._fh = fh
        self._allow = allow_truncated
        if len(nonce) != 16:
            self._aead: ChaCha20Poly1305 | None = None
            if not allow_truncated:  # age counts the nonce as part of the header
                raise AgeHeaderError("header: payload nonce missing (file truncated)")
            self.truncated = True
        else:
            self._aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))

    def _cut(self, why: str) -> None:
        if not self._allow:
            raise AgeTruncatedError(f"file is truncated ({why})")
        self.truncated = True

    def _open(self, counter: int, data: bytes, last: bool) -> bytes | None:
        assert self._aead is not None
        try:
            return self._aead.decrypt(chunk_nonce(counter, last), data, None)
        except _invalid_tag():
            return None

    def chunks(self) -> Iterator[bytes]:
        if self._aead is None:
            return
        counter = 0
        piece = self._fh.read(CHUNK + TAG)
        while True:
            nxt = self._fh.read(CHUNK + TAG) if len(piece) == CHUNK + TAG else b""
            if nxt:
                plain = self._open(counter, piece, False)
                if plain is None:
                    final = self._open(counter, piece, True)
                    if final is not None:  # a whole last chunk, then more bytes
                        yield final
                        raise AgePayloadError(f"data after the last chunk ({counter}): altered")
                    raise AgeAuthenticationError(
                        f"chunk {counter} fails authentication (file altered)"
                    )
                yield plain
                piece, counter = nxt, counter + 1
                continue
            last = self._open(counter, piece, True)
            if last is not None:
                if not last and counter > 0:
                    raise AgePayloadError("empty last chunk after a full chunk")
                yield last
                return
            if len(piece) == CHUNK + TAG:
                plain = self._open(counter, piece, False)
                if plain is not None:
                    why = f"ends after chunk {counter} without a last chunk"
                    if self._allow:
                        self._cut(why)
                    yield plain  # authenticated; what is missing comes after it
                    self._cut(why)
                    return
            if len(piece) < CHUNK + TAG and self._allow:
                self._cut(f"chunk {counter} is incomplete")
                return
            # A short final piece that fails is altered or cut inside the chunk: no key tells
            # which. Reading a possibly cut-off segment, it counts as the cut (the segment's
            # signed manifest, with the ciphertext's SHA-256, catches an alteration of a sealed
            # segment); otherwise it is an authentication failure, reported as altered.
            raise AgeAuthenticationError(
                f"chunk {counter} fails authentication (file altered, or cut off in the chunk)"
            )

    def read_all(self) -> bytes:
        return b"".join(self.chunks())


def decrypt_bytes(data: bytes, identities: Sequence[X25519PrivateKey | str]) -> bytes:
    return AgeReader(io.BytesIO(data), identities).read_all()


def header_length(fh: BinaryIO) -> int:
    """Bytes of header + payload nonce, read without any key (for structural checks)."""
    parse_header(fh)
    return fh.tell() + 16

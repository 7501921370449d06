"""The age v1 file format (https://age-encryption.org/v1), X25519 recipients only, streaming.

Archives, wrapped segment keys and wrapped authorisation keys are age files, so an investigator
can open any of them with the standard `age` tool. This module is a small, dependency-light
implementation on `cryptography`, because archiving needs what the wrappers do not offer: a
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

import base64
import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store import StoreError
from store.bech32 import Bech32Error, bech32_decode, bech32_encode

VERSION_LINE = b"age-encryption.org/v1"
X25519_INFO = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024
TAG = 16
MAX_HEADER = 64 * 1024
RAW = serialization.Encoding.Raw


class AgeError(StoreError):
    """An age key or file is malformed, or no identity opens it, or a chunk fails to verify."""


# -- keys ------------------------------------------------------------------------------------
def encode_recipient(key: X25519PublicKey) -> str:
    return bech32_encode("age", key.public_bytes(RAW, serialization.PublicFormat.Raw))


def encode_identity(key: X25519PrivateKey) -> str:
    raw = key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return bech32_encode("age-secret-key-", raw).upper()


def parse_recipient(text: str) -> X25519PublicKey:
    try:
        hrp, data = bech32_decode(text.strip())
    except Bech32Error as exc:
        raise AgeError(f"not an age recipient (age1...): {exc}") from None
    if hrp != "age" or len(data) != 32 or not text.strip().startswith("age1"):
        raise AgeError("not an age X25519 recipient (age1...)")
    return X25519PublicKey.from_public_bytes(data)


def parse_identity(text: str) -> X25519PrivateKey:
    raw = text.strip()
    try:
        hrp, data = bech32_decode(raw)
    except Bech32Error as exc:
        raise AgeError(f"not an age identity (AGE-SECRET-KEY-1...): {exc}") from None
    if hrp != "age-secret-key-" or len(data) != 32 or raw != raw.upper():
        raise AgeError("not an age X25519 identity (AGE-SECRET-KEY-1...)")
    return X25519PrivateKey.from_private_bytes(data)


def parse_identity_file(text: str, where: str = "identity file") -> list[X25519PrivateKey]:
    """Identities in age-keygen's format: `#` comments, blank lines, AGE-SECRET-KEY-1 lines."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(parse_identity(line))
        except AgeError as exc:
            raise AgeError(f"{where}:{number}: {exc}") from None
    if not found:
        raise AgeError(f"{where}: no AGE-SECRET-KEY-1 identity in it")
    return found


def generate() -> tuple[str, str]:
    """A fresh X25519 pair as (AGE-SECRET-KEY-1..., age1...)."""
    key = X25519PrivateKey.generate()
    return encode_identity(key), encode_recipient(key.public_key())


def public_of(identity_text: str) -> str:
    return encode_recipient(parse_identity(identity_text).public_key())


def recipient_fingerprint(recipient: str) -> str:
    """SHA-256 hex of the raw 32-byte X25519 public key."""
    raw = parse_recipient(recipient).public_bytes(RAW, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def identity_file_text(identity: str, comments: Sequence[str] = ()) -> str:
    public = public_of(identity)
    lines = [f"# {c}" for c in comments] + [f"# public key: {public}", identity]
    return "\n".join(lines) + "\n"


# -- primitives ------------------------------------------------------------------------------
def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    if b"=" in data or b"\r" in data:
        raise AgeError("header: non-canonical base64")
    try:
        raw = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except ValueError:
        raise AgeError("header: invalid base64") from None
    if _b64(raw) != data:
        raise AgeError("header: non-canonical base64")
    return raw


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def build_header(file_key: bytes, recipients: Sequence[X25519PublicKey]) -> bytes:
    if not recipients:
        raise AgeError("no recipients")
    out = [VERSION_LINE + b"\n"]
    for recipient in recipients:
        eph = X25519PrivateKey.generate()
        share = eph.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
        rcpt = recipient.public_bytes(RAW, serialization.PublicFormat.Raw)
        shared = eph.exchange(recipient)
        wrap_key = _hkdf(shared, share + rcpt, X25519_INFO)
        body = ChaCha20Poly1305(wrap_key).encrypt(b"\x00" * 12, file_key, None)
        out.append(b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n")
    text = b"".join(out) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
    return text + b" " + _b64(mac) + b"\n"


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
        keys = [parse_recipient(r) if isinstance(r, str) else r for r in recipients]
        self._out = out
        self._many = getattr(out, "write_many", None)
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        header = build_header(file_key, keys)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
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
        sealed = self._aead.encrypt(_nonce(self._counter, last), chunk, None)  # type: ignore[arg-type]
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


def _read_line(fh: BinaryIO, budget: list[int]) -> bytes:
    line = fh.readline(budget[0] + 1)
    budget[0] -= len(line)
    if budget[0] < 0:
        raise AgeError("header: too long")
    if not line.endswith(b"\n"):
        raise AgeError("header: truncated")
    return line[:-1]


def parse_header(fh: BinaryIO) -> tuple[list[tuple[bytes, bytes]], bytes, bytes]:
    """Returns ([(share, body)] of X25519 stanzas, header text up to '---', mac). Other stanza
    types are skipped (they are for other identity types)."""
    budget = [MAX_HEADER]
    text = bytearray()
    line = _read_line(fh, budget)
    if line != VERSION_LINE:
        raise AgeError("not an age v1 file")
    text += line + b"\n"
    stanzas: list[tuple[bytes, bytes]] = []
    line = _read_line(fh, budget)
    while line.startswith(b"-> "):
        text += line + b"\n"
        args = line[3:].split(b" ")
        body = bytearray()
        while True:
            body_line = _read_line(fh, budget)
            text += body_line + b"\n"
            if len(body_line) > 64:
                raise AgeError("header: stanza line longer than 64 columns")
            body += _unb64(body_line)
            if len(body_line) < 64:
                break
        if args[0] == b"X25519":
            if len(args) != 2:
                raise AgeError("header: malformed X25519 stanza")
            stanzas.append((_unb64(args[1]), bytes(body)))
        line = _read_line(fh, budget)
    if not line.startswith(b"--- "):
        raise AgeError("header: missing MAC line")
    text += b"---"
    return stanzas, bytes(text), _unb64(line[4:])


def _unwrap(stanzas: list[tuple[bytes, bytes]], identities: Sequence[X25519PrivateKey]) -> bytes:
    for identity in identities:
        rcpt = identity.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
        for share, body in stanzas:
            if len(share) != 32 or len(body) != 32:
                raise AgeError("header: malformed X25519 stanza")
            try:
                shared = identity.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise AgeError("header: X25519 share is a low-order point") from None
            wrap_key = _hkdf(shared, share + rcpt, X25519_INFO)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue
    raise AgeError("no identity matched any of the file's recipients")


class AgeReader:
    """Decrypts an age file chunk by chunk, verifying each chunk before returning it.

    With `allow_truncated`, a file cut off after a whole chunk (or inside one) yields the
    authenticated prefix and sets `truncated`; otherwise a cut-off file raises AgeError.
    """

    def __init__(
        self,
        fh: BinaryIO,
        identities: Sequence[X25519PrivateKey | str],
        *,
        allow_truncated: bool = False,
    ) -> None:
        keys = [parse_identity(i) if isinstance(i, str) else i for i in identities]
        stanzas, text, mac = parse_header(fh)
        file_key = _unwrap(stanzas, keys)
        expect = hmac.new(_hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
        if not hmac.compare_digest(expect, mac):
            raise AgeError("header MAC mismatch (file altered)")
        nonce = fh.read(16)
        self.truncated = False
        self._fh = fh
        self._allow = allow_truncated
        if len(nonce) != 16:
            self._aead: ChaCha20Poly1305 | None = None
            self._cut("payload nonce missing")
        else:
            self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))

    def _cut(self, why: str) -> None:
        if not self._allow:
            raise AgeError(f"file is truncated ({why})")
        self.truncated = True

    def _open(self, counter: int, data: bytes, last: bool) -> bytes | None:
        assert self._aead is not None
        try:
            return self._aead.decrypt(_nonce(counter, last), data, None)
        except InvalidTag:
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
                    raise AgeError(f"chunk {counter} fails authentication (file altered)")
                yield plain
                piece, counter = nxt, counter + 1
                continue
            last = self._open(counter, piece, True)
            if last is not None:
                if not last and counter > 0:
                    raise AgeError("empty last chunk")
                yield last
                return
            if len(piece) == CHUNK + TAG:
                plain = self._open(counter, piece, False)
                if plain is not None:
                    self._cut(f"ends after chunk {counter} without a last chunk")
                    yield plain
                    return
            if len(piece) < CHUNK + TAG and self._allow:
                self._cut(f"chunk {counter} is incomplete")
                return
            raise AgeError(f"chunk {counter} fails authentication (file altered or cut off)")

    def read_all(self) -> bytes:
        return b"".join(self.chunks())


def decrypt_bytes(data: bytes, identities: Sequence[X25519PrivateKey | str]) -> bytes:
    import io

    return AgeReader(io.BytesIO(data), identities).read_all()


def header_length(fh: BinaryIO) -> int:
    """Bytes of header + payload nonce, read without any key (for structural checks)."""
    parse_header(fh)
    return fh.tell() + 16

"""Shared pieces of the age v1 implementation (store/agefile.py): the error kinds a reader
raises, age's key text forms (`age1...`, `AGE-SECRET-KEY-1...`) and the small primitives both
the writer and the reader use. Import them through `store.agefile`, which re-exports them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from store import StoreError
from store.bech32 import Bech32Error, bech32_decode, bech32_encode

VERSION_LINE = b"age-encryption.org/v1"
X25519_INFO = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024
TAG = 16
MAX_HEADER = 64 * 1024
if TYPE_CHECKING:  # `cryptography` loads at first use (start-up: docs/startup.md)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


class AgeError(StoreError):
    """An age key or file is malformed, or no identity opens it, or a chunk fails to verify.

    Reading a file raises one of the subclasses below; they follow the `expect` values of the
    C2SP age test vectors (tests/store/test_store_agefile_vectors.py runs them).
    """


class AgeHeaderError(AgeError):
    """The header is malformed or cut off ("header failure")."""


class AgeUnsupportedError(AgeError):
    """A file using an age feature lbm does not implement: passphrase (scrypt) recipients or
    ASCII armor. Such files are refused, never decrypted."""


class AgeNoMatchError(AgeError):
    """None of the given identities opens any recipient stanza ("no match")."""


class AgeHmacError(AgeError):
    """The header's MAC does not verify: the header was altered ("HMAC failure")."""


class AgePayloadError(AgeError):
    """The payload is malformed ("payload failure")."""


class AgeAuthenticationError(AgePayloadError):
    """A payload chunk fails authentication: the file was altered (or cut inside a chunk, which
    cannot be told apart from an alteration)."""


class AgeTruncatedError(AgePayloadError):
    """Every chunk present authenticates, but the last chunk is missing: the file was cut off."""


# -- keys ------------------------------------------------------------------------------------
def raw_public(key: X25519PublicKey) -> bytes:
    """The 32 raw bytes of an X25519 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_recipient(key: X25519PublicKey) -> str:
    return bech32_encode("age", raw_public(key))


def encode_identity(key: X25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return bech32_encode("age-secret-key-", raw).upper()


def parse_recipient(text: str) -> X25519PublicKey:
    try:
        hrp, data = bech32_decode(text.strip())
    except Bech32Error as exc:
        raise AgeError(f"not an age recipient (age1...): {exc}") from None
    if hrp != "age" or len(data) != 32 or not text.strip().startswith("age1"):
        raise AgeError("not an age X25519 recipient (age1...)")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(data)


def parse_identity(text: str) -> X25519PrivateKey:
    raw = text.strip()
    try:
        hrp, data = bech32_decode(raw)
    except Bech32Error as exc:
        raise AgeError(f"not an age identity (AGE-SECRET-KEY-1...): {exc}") from None
    if hrp != "age-secret-key-" or len(data) != 32 or raw != raw.upper():
        raise AgeError("not an age X25519 identity (AGE-SECRET-KEY-1...)")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

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
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    return encode_identity(key), encode_recipient(key.public_key())


def public_of(identity_text: str) -> str:
    return encode_recipient(parse_identity(identity_text).public_key())


def recipient_fingerprint(recipient: str) -> str:
    """SHA-256 hex of the raw 32-byte X25519 public key."""
    raw = raw_public(parse_recipient(recipient))
    return hashlib.sha256(raw).hexdigest()


def identity_file_text(identity: str, comments: Sequence[str] = ()) -> str:
    public = public_of(identity)
    lines = [f"# {c}" for c in comments] + [f"# public key: {public}", identity]
    return "\n".join(lines) + "\n"


# -- primitives ------------------------------------------------------------------------------
def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def unb64(data: bytes) -> bytes:
    if b"=" in data or b"\r" in data:
        raise AgeHeaderError("header: non-canonical base64")
    try:
        raw = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except ValueError:
        raise AgeHeaderError("header: invalid base64") from None
    if b64(raw) != data:
        raise AgeHeaderError("header: non-canonical base64")
    return raw


def chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")

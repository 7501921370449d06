"""The wire formats under SSHSIG: SSH strings, public key blobs, the armor and the signature blob.

Kept apart from `store.sshsig` (signing, verification, allowed signers) so both that module and the
allowed-signers parser share one strict decoder. Every decoder here refuses what OpenSSH would not
write: trailing bytes, non-canonical key encodings, a non-empty reserved field. The public key is
not covered by the signature, so accepting a second encoding of it would make signatures malleable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from store import StoreError

if TYPE_CHECKING:  # `cryptography` loads when a key is decoded (start-up: docs/startup.md)
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    PublicKey = Ed25519PublicKey | RSAPublicKey | EllipticCurvePublicKey

MAGIC = b"SSHSIG"
VERSION = 1
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
WRAP = 70  # ssh-keygen's line length inside the armor
MAX_ARMOR = 64 * 1024  # an RSA-16384 signature is about 6 KiB armored
HASHES = ("sha256", "sha512")
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 16384  # OpenSSH's own limit

_B64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,64}")


class SshsigError(StoreError):
    """A signature, key or allowed-signers file is malformed, or a signature does not verify.

    The message says what is wrong; it never carries the signed content.
    """


def show(text: str) -> str:
    """A value taken from untrusted input, safe to put in a one-line error message."""
    return repr(text) if _PRINTABLE.fullmatch(text) else "(unprintable)"


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class Reader:
    """Reads SSH wire types from a buffer; every short read or leftover byte is an error."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def raw(self, n: int) -> bytes:
        if len(self._data) - self._pos < n:
            raise SshsigError(f"{self._what}: truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        return self.raw(self.u32())

    def text(self, field: str) -> str:
        raw = self.string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SshsigError(f"{self._what}: {field} is not UTF-8") from None

    def mpint(self) -> int:
        raw = self.string()
        if not raw:
            return 0
        if raw[0] & 0x80:
            raise SshsigError(f"{self._what}: negative integer")
        if raw[0] == 0 and (len(raw) == 1 or not raw[1] & 0x80):
            raise SshsigError(f"{self._what}: integer with a needless leading zero")
        return int.from_bytes(raw, "big")

    def done(self) -> None:
        if self._pos != len(self._data):
            raise SshsigError(f"{self._what}: {len(self._data) - self._pos} trailing bytes")


def key_from_blob(blob: bytes, what: str) -> PublicKey:
    """The public key in an SSH key blob of a supported type, encoded canonically."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    key_type = Reader(blob, what).text("key type")
    if key_type not in KEY_TYPES:
        raise SshsigError(f"{what}: key type {show(key_type)} is not supported")
    line = f"{key_type} {base64.b64encode(blob).decode()}".encode()
    try:
        key = serialization.load_ssh_public_key(line)
    except (ValueError, TypeError) as exc:
        raise SshsigError(f"{what}: malformed {key_type} key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey | RSAPublicKey | EllipticCurvePublicKey):
        raise SshsigError(f"{what}: key type {show(key_type)} is not supported")
    if isinstance(key, RSAPublicKey) and not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
        raise SshsigError(
            f"{what}: RSA key of {key.key_size} bits (need {RSA_MIN_BITS} to {RSA_MAX_BITS})"
        )
    if key_blob(key) != blob:
        raise SshsigError(f"{what}: non-canonical encoding of a {key_type} key")
    return key


def key_blob(key: PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def blob_line(blob: bytes) -> str:
    """`TYPE BASE64` for a key blob already checked by `key_from_blob`."""
    key_type = Reader(blob, "public key").text("key type")
    return f"{key_type} {base64.b64encode(blob).decode()}"


def blob_fingerprint(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_key_line(line: str, what: str = "public key") -> tuple[bytes, PublicKey]:
    """An OpenSSH public key line `TYPE BASE64 [comment]`: (canonical blob, key)."""
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        raise SshsigError(f"{what}: not an OpenSSH public key line (TYPE BASE64 [comment])")
    key_type, b64 = fields[0], fields[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SshsigError(f"{what}: the key is not valid base64") from None
    key = key_from_blob(blob, what)
    if blob_line(blob).split()[0] != key_type:
        raise SshsigError(f"{what}: the line says {show(key_type)} but the key is another type")
    return blob, key


def armor(blob: bytes) -> bytes:
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + WRAP] for i in range(0, len(b64), WRAP)]
    return ("\n".join([BEGIN, *lines, END]) + "\n").encode()


def dearmor(signature: bytes | str) -> bytes:
    """The blob inside `-----BEGIN SSH SIGNATURE-----` armor; anything but line ends after the
    end marker, a missing marker or a bad base64 line is refused."""
    if isinstance(signature, str):
        try:
            signature = signature.encode("ascii")
        except UnicodeEncodeError:
            raise SshsigError("signature: armor is not ASCII") from None
    if len(signature) > MAX_ARMOR:
        raise SshsigError(f"signature: larger than {MAX_ARMOR} bytes")
    try:
        text = signature.decode("ascii")
    except UnicodeDecodeError:
        raise SshsigError("signature: armor is not ASCII") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[0] != BEGIN:
        raise SshsigError(f"signature: does not start with {BEGIN}")
    try:
        end = lines.index(END)
    except ValueError:
        raise SshsigError(f"signature: no {END} line") from None
    if any(lines[end + 1 :]):
        raise SshsigError("signature: data after the end of the armor")
    body = lines[1:end]
    if not body or not all(_B64_LINE.fullmatch(line) for line in body):
        raise SshsigError("signature: the armor's body is not base64 lines")
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise SshsigError("signature: the armor's body is not valid base64") from None


@dataclass(frozen=True)
class Blob:
    """A decoded SSHSIG blob (not yet verified)."""

    key_blob: bytes
    key: PublicKey
    namespace: str
    hash_alg: str
    sig_alg: str
    sig: bytes


def parse_blob(blob: bytes) -> Blob:
    what = "signature"
    r = Reader(blob, what)
    if r.raw(len(MAGIC)) != MAGIC:
        raise SshsigError(f"{what}: not an SSHSIG blob (bad magic)")
    version = r.u32()
    if version != VERSION:
        raise SshsigError(f"{what}: version {version} is not supported (only {VERSION})")
    pub = r.string()
    namespace = r.text("namespace")
    reserved = r.string()
    hash_alg = r.text("hash algorithm")
    inner = r.string()
    r.done()
    if not namespace or "\0" in namespace:
        raise SshsigError(f"{what}: the namespace is empty or holds a NUL")
    if reserved:
        raise SshsigError(f"{what}: the reserved field is not empty")
    if hash_alg not in HASHES:
        raise SshsigError(f"{what}: hash algorithm {show(hash_alg)} is not sha256 or sha512")
    key = key_from_blob(pub, f"{what}: public key")
    ir = Reader(inner, f"{what}: signature field")
    sig_alg = ir.text("algorithm")
    sig = ir.string()
    ir.done()
    return Blob(pub, key, namespace, hash_alg, sig_alg, sig)


def signed_data(namespace: str, hash_alg: str, message: bytes) -> bytes:
    """What the key signs (PROTOCOL.sshsig): magic, namespace, reserved, hash name, H(message)."""
    digest = hashlib.new(hash_alg, message).digest()
    return (
        MAGIC
        + ssh_string(namespace.encode("utf-8"))
        + ssh_string(b"")
        + ssh_string(hash_alg.encode())
        + ssh_string(digest)
    )


def build_blob(pub: bytes, namespace: str, hash_alg: str, sig_alg: str, sig: bytes) -> bytes:
    return (
        MAGIC
        + struct.pack(">I", VERSION)
        + ssh_string(pub)
        + ssh_string(namespace.encode("utf-8"))
        + ssh_string(b"")
        + ssh_string(hash_alg.encode())
        + ssh_string(ssh_string(sig_alg.encode()) + ssh_string(sig))
    )

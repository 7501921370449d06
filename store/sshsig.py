"""OpenSSH SSHSIG signatures (PROTOCOL.sshsig), byte-compatible with `ssh-keygen -Y`.

Officers sign CA1 applications and statements with stock OpenSSH (`ssh-keygen -Y sign -n lbm-ca1`),
and the gateway signs evidence bundles (namespace `lbm-evidence`) so that a reviewer can check
them with `ssh-keygen -Y verify` alone. lbm signs with Ed25519 and SHA-512 only, which is
deterministic: `sign` gives exactly the bytes `ssh-keygen -Y sign` writes for the same key. It
verifies ssh-ed25519, RSA (rsa-sha2-512 or rsa-sha2-256, 2048 bits or more) and ECDSA (nistp256,
nistp384, nistp521) signatures over sha256 or sha512 message hashes; anything else is refused.

Wire decoding lives in `store.sshsig_wire`, allowed-signers files in `store.sshsig_allowed`.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from store.signing import public_openssh
from store.sshsig_allowed import AllowedSigner, match_list, parse_allowed_signers
from store.sshsig_wire import (
    Blob,
    Reader,
    SshsigError,
    armor,
    blob_fingerprint,
    blob_line,
    build_blob,
    dearmor,
    key_blob,
    parse_blob,
    parse_key_line,
    show,
    signed_data,
)

if TYPE_CHECKING:
    from store.sshsig_wire import PublicKey

__all__ = [
    "AllowedSigner",
    "SshsigError",
    "fingerprint",
    "load_private_key",
    "parse_allowed_signers",
    "public_key_line",
    "sign",
    "signature_public_key",
    "verify",
    "verify_allowed",
]

SIGN_HASH = "sha512"  # ssh-keygen's default
MAX_KEY_FILE = 64 * 1024

_RSA_HASHES: dict[str, hashes.HashAlgorithm] = {
    "rsa-sha2-512": hashes.SHA512(),
    "rsa-sha2-256": hashes.SHA256(),
}
_EC_ALGORITHMS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "secp256r1": ("ecdsa-sha2-nistp256", hashes.SHA256()),
    "secp384r1": ("ecdsa-sha2-nistp384", hashes.SHA384()),
    "secp521r1": ("ecdsa-sha2-nistp521", hashes.SHA512()),
}
_MISMATCH = "signature: does not verify (the message was changed or another key signed it)"


def public_key_line(key: Ed25519PublicKey, comment: str = "") -> str:
    """`ssh-ed25519 BASE64 [comment]`, as in a `.pub` file."""
    return public_openssh(key, comment)


def fingerprint(public_key: str) -> str:
    """`SHA256:...` of an OpenSSH public key line, as `ssh-keygen -l` prints it."""
    blob, _key = parse_key_line(public_key)
    return blob_fingerprint(blob)


def sign(private_key: Ed25519PrivateKey, message: bytes, namespace: str) -> bytes:
    """Armored SSHSIG over `message`, identical to what `ssh-keygen -Y sign -n NAMESPACE` writes."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SshsigError("lbm signs with Ed25519 keys only")
    if not namespace or "\0" in namespace:
        raise SshsigError("signature: the namespace is empty or holds a NUL")
    signature = private_key.sign(signed_data(namespace, SIGN_HASH, message))
    pub = key_blob(private_key.public_key())
    return armor(build_blob(pub, namespace, SIGN_HASH, "ssh-ed25519", signature))


def signature_public_key(signature: bytes | str) -> str:
    """The signer's public key line (`TYPE BASE64`) carried in a signature; not yet verified."""
    return blob_line(parse_blob(dearmor(signature)).key_blob)


def _check_signature(key: PublicKey, sig_alg: str, sig: bytes, data: bytes) -> None:
    try:
        if isinstance(key, Ed25519PublicKey):
            if sig_alg != "ssh-ed25519" or len(sig) != 64:
                raise SshsigError(f"signature: algorithm {show(sig_alg)} for an ssh-ed25519 key")
            key.verify(sig, data)
        elif isinstance(key, RSAPublicKey):
            if sig_alg not in _RSA_HASHES:
                raise SshsigError(f"signature: algorithm {show(sig_alg)} for an ssh-rsa key")
            size = (key.key_size + 7) // 8
            if len(sig) > size:
                raise SshsigError("signature: RSA signature longer than the modulus")
            # OpenSSH accepts a signature shorter than the modulus and left-pads it.
            key.verify(sig.rjust(size, b"\0"), data, padding.PKCS1v15(), _RSA_HASHES[sig_alg])
        else:
            name, hash_alg = _EC_ALGORITHMS.get(key.curve.name, ("", hashes.SHA256()))
            if not name or sig_alg != name:
                raise SshsigError(f"signature: algorithm {show(sig_alg)} for this ECDSA key")
            reader = Reader(sig, "signature: ECDSA value")
            r, s = reader.mpint(), reader.mpint()
            reader.done()
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_alg))
    except InvalidSignature:
        raise SshsigError(_MISMATCH) from None


def _verified(signature: bytes | str, message: bytes, namespace: str) -> Blob:
    """The blob of a signature made over `message` in `namespace` by the key it carries."""
    blob = parse_blob(dearmor(signature))
    if blob.namespace != namespace:
        raise SshsigError(
            f"signature: made for namespace {show(blob.namespace)}, not {show(namespace)}"
        )
    _check_signature(
        blob.key, blob.sig_alg, blob.sig, signed_data(namespace, blob.hash_alg, message)
    )
    return blob


def verify(signature: bytes | str, message: bytes, namespace: str, public_key: str) -> None:
    """Check that `public_key` signed `message` in `namespace`; raise SshsigError if not."""
    expected, _key = parse_key_line(public_key)
    blob = _verified(signature, message, namespace)
    if blob.key_blob != expected:
        raise SshsigError(
            f"signature: made by {blob_fingerprint(blob.key_blob)}, "
            f"not by {blob_fingerprint(expected)}"
        )


def verify_allowed(
    signature: bytes | str,
    message: bytes,
    namespace: str,
    signers: Sequence[AllowedSigner],
    principal: str | None = None,
    at: datetime | None = None,
) -> AllowedSigner:
    """The allowed-signers entry whose key signed `message` in `namespace`, which lists
    `principal` (if given), allows `namespace` and is valid at `at` (default: now)."""
    when = at if at is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise SshsigError("verification time has no time zone")
    blob = _verified(signature, message, namespace)
    signer = blob_fingerprint(blob.key_blob)
    line = blob_line(blob.key_blob)
    entries = [entry for entry in signers if " ".join(entry.public_key.split()[:2]) == line]
    if not entries:
        raise SshsigError(f"signature: signer {signer} is not in the allowed signers")
    if principal is not None:
        entries = [entry for entry in entries if match_list(principal, entry.principals)]
        if not entries:
            raise SshsigError(f"signature: signer {signer} is not allowed as {show(principal)}")
    in_namespace = [
        entry
        for entry in entries
        if entry.namespaces is None or match_list(namespace, entry.namespaces)
    ]
    if not in_namespace:
        raise SshsigError(f"signature: signer {signer} is not allowed namespace {show(namespace)}")
    for entry in in_namespace:
        if entry.valid_at(when):
            return entry
    raise SshsigError(f"signature: signer {signer} is not valid at {when.isoformat()}")


def _encrypted(data: bytes) -> bool:
    """Whether an `openssh-key-v1` file names a cipher other than `none`."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or lines[0] != b"-----BEGIN OPENSSH PRIVATE KEY-----":
        return False
    try:
        raw = base64.b64decode(b"".join(lines[1:-1]))
        reader = Reader(raw, "private key")
        if reader.raw(15) != b"openssh-key-v1\0":
            return False
        return reader.string() != b"none"
    except (binascii.Error, ValueError, SshsigError):
        return False


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted OpenSSH Ed25519 private key (as `ssh-keygen -t ed25519 -N ''` writes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SshsigError(f"{path}: cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SshsigError(f"{path}: not a regular file")
        data = handle.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise SshsigError(f"{path}: too large for a private key file")
    if _encrypted(data):
        raise SshsigError(f"{path}: the key is encrypted; lbm needs an unencrypted key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SshsigError(f"{path}: not an OpenSSH private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SshsigError(f"{path}: not an Ed25519 key")
    return key

"""OpenSSH Ed25519 key files read without `cryptography` (a fast path for start-up).

Loading the gateway key through `cryptography` costs its import (12-15 ms) before the first
packet of a capture replay, a command that never signs anything unless a subject's packets are
archived. These decoders read the two formats the gateway writes: an unencrypted
`openssh-key-v1` private key holding one ssh-ed25519 key, and an `ssh-ed25519 BASE64 [comment]`
public key line. They are strict: whatever they accept, `cryptography`'s loaders accept with the
same key bytes (tests/store/test_boot_sshkey.py checks it on keys from `cryptography` and
`ssh-keygen` and on corrupted ones). Anything else returns None, and the caller falls back to
`cryptography`, whose error message is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct

ED25519 = b"ssh-ed25519"
_MAGIC = b"openssh-key-v1\0"
_PEM = re.compile(
    rb"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", re.DOTALL
)
_PUB_LINE = re.compile(rb"\Assh-ed25519 ([A-Za-z0-9+/]+={0,2})(?: .*)?\Z", re.DOTALL)


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    (n,) = struct.unpack_from(">I", data, pos)
    end = pos + 4 + n
    if end > len(data):
        raise ValueError("truncated")
    return data[pos + 4 : end], end


def public_blob(public: bytes) -> bytes:
    """The SSH wire blob of an Ed25519 public key (what fingerprints hash)."""
    return struct.pack(">I", len(ED25519)) + ED25519 + struct.pack(">I", len(public)) + public


def fingerprint_raw(public: bytes) -> str:
    """SHA-256 hex of the OpenSSH public key blob (`store.signing.fingerprint`)."""
    return hashlib.sha256(public_blob(public)).hexdigest()


def parse_private(data: bytes) -> tuple[bytes, bytes] | None:
    """(seed, public) of an unencrypted one-key ssh-ed25519 OpenSSH private key file, or None
    when the file is anything else (then `cryptography` decides and words the error)."""
    try:
        return _parse_private(data)
    except (ValueError, binascii.Error, struct.error):
        return None


def _parse_private(data: bytes) -> tuple[bytes, bytes] | None:
    m = _PEM.search(data)
    if m is None:
        return None
    raw = binascii.a2b_base64(m.group(1))
    if not raw.startswith(_MAGIC):
        return None
    pos = len(_MAGIC)
    cipher, pos = _string(raw, pos)
    kdf, pos = _string(raw, pos)
    _kdf_options, pos = _string(raw, pos)
    if cipher != b"none" or kdf != b"none":
        return None  # encrypted: cryptography refuses it with its own message
    if raw[pos : pos + 4] != b"\x00\x00\x00\x01":
        return None
    pub_blob, pos = _string(raw, pos + 4)
    key_type, p = _string(pub_blob, 0)
    point, p = _string(pub_blob, p)
    if key_type != ED25519 or p != len(pub_blob) or len(point) != 32:
        return None
    secret, pos = _string(raw, pos)
    if pos != len(raw) or not secret or len(secret) % 8:
        return None
    if secret[0:4] != secret[4:8]:
        return None  # check integers differ
    key_type2, p = _string(secret, 8)
    point2, p = _string(secret, p)
    pair, p = _string(secret, p)
    _comment, p = _string(secret, p)
    padding = secret[p:]
    if key_type2 != ED25519 or point2 != point or len(pair) != 64 or pair[32:] != point:
        return None
    if padding != bytes(range(1, 1 + len(padding))) or len(padding) > 16:
        return None
    return pair[:32], point


def parse_public(text: str) -> bytes | None:
    """The 32-byte key of an `ssh-ed25519 BASE64 [comment]` line, or None (not that)."""
    m = _PUB_LINE.match(text.strip().encode("utf-8", "replace"))
    if m is None:
        return None
    try:
        blob = base64.b64decode(m.group(1), validate=True)
        key_type, p = _string(blob, 0)
        point, p = _string(blob, p)
    except (ValueError, binascii.Error):
        return None
    if key_type != ED25519 or p != len(blob) or len(point) != 32:
        return None
    return point

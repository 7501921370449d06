"""The gateway's Ed25519 signing key (OpenSSH format) and signature checks.

The private key signs audit entries, audit heads and archive manifests. Rotation keeps every
old public key under keys/retired/ so that what was signed before still verifies.
Fingerprints are the SHA-256 hex of the OpenSSH public key blob.

Keys found in the data directory say nothing about who signed: anyone who can write keys/ can
add one. Trust comes from outside: an allowed-signers line kept off the box
(`parse_allowed_signers`) and, for later keys, the audit log's own `key_rotate` entries, each
signed by the previous key. An audited rotation stages the new key as keys/gateway_ed25519.next,
writes that entry, then installs the key (`stage_next`, `install_next`), so a crash in between
leaves a key the next append can finish installing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from store import KeyError_, sshkey
from store.fsutil import atomic_write, ensure_dir, fsync_dir
from store.paths import DataPaths

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# `cryptography` is imported where a key is made, used or loaded the slow way: loading the
# gateway key (`load`) reads the file with `store.sshkey`, so a command that signs nothing (a
# capture replay without subjects) never imports it (12-15 ms of start-up, docs/startup.md).


def public_openssh(key: Ed25519PublicKey, comment: str = "") -> str:
    from cryptography.hazmat.primitives import serialization

    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    text = line.decode()
    return f"{text} {comment}".strip()


def fingerprint(key: Ed25519PublicKey) -> str:
    blob = base64.b64decode(public_openssh(key).split()[1])
    return hashlib.sha256(blob).hexdigest()


def load_public(text: str, where: str = "public key") -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except ValueError as exc:
        raise KeyError_(f"{where}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{where}: not an Ed25519 key")
    return key


class GatewayKey:
    """The gateway's current signing key plus every public key it has used.

    Made from `cryptography` objects, or (`from_raw`, what `load` does) from the key bytes
    read by `store.sshkey`: then the `cryptography` objects are made at first use, and the
    fingerprint needs none."""

    def __init__(self, private: Ed25519PrivateKey, retired: dict[str, Ed25519PublicKey]) -> None:
        self._private: Ed25519PrivateKey | None = private
        self._retired: dict[str, Ed25519PublicKey] | None = retired
        self._seed = b""
        self._public_raw = b""
        self._retired_raw: dict[str, bytes] = {}
        self._where = ""

    @classmethod
    def from_raw(
        cls, seed: bytes, public: bytes, retired: dict[str, bytes], where: str
    ) -> GatewayKey:
        """A key from its 32-byte seed and public key (`store.sshkey`); `retired` maps
        fingerprints to raw public keys; `where` names the file in errors."""
        key = cls.__new__(cls)
        key._private, key._retired = None, None
        key._seed, key._public_raw, key._retired_raw, key._where = seed, public, retired, where
        return key

    @property
    def private(self) -> Ed25519PrivateKey:
        if self._private is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            private = Ed25519PrivateKey.from_private_bytes(self._seed)
            raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if raw != self._public_raw:  # a file whose two halves disagree: never sign with it
                raise KeyError_(f"{self._where}: corrupt key (its public half does not match)")
            self._private = private
        return self._private

    @property
    def retired(self) -> dict[str, Ed25519PublicKey]:
        if self._retired is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            self._retired = {
                fp: Ed25519PublicKey.from_public_bytes(raw) for fp, raw in self._retired_raw.items()
            }
        return self._retired

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def fingerprint(self) -> str:
        if self._private is None:
            return sshkey.fingerprint_raw(self._public_raw)
        return fingerprint(self.public)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode()

    def known_keys(self) -> dict[str, Ed25519PublicKey]:
        keys = dict(self.retired)
        keys[self.fingerprint] = self.public
        return keys


def verify(keys: dict[str, Ed25519PublicKey], key_fp: str, data: bytes, sig_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    key = keys.get(key_fp)
    if key is None:
        return False
    try:
        key.verify(base64.b64decode(sig_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _write_pair(paths: DataPaths, private: Ed25519PrivateKey, comment: str) -> None:
    from cryptography.hazmat.primitives import serialization

    ensure_dir(paths.keys)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    atomic_write(paths.signing_key, pem, mode=0o600)
    pub = public_openssh(private.public_key(), comment) + "\n"
    atomic_write(paths.signing_pub, pub.encode(), mode=0o600)


def create(paths: DataPaths, comment: str) -> GatewayKey:
    """Make the gateway signing key; refuses to overwrite one that exists."""
    if paths.signing_key.exists():
        raise KeyError_(f"{paths.signing_key}: a gateway signing key exists already")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    _write_pair(paths, private, comment)
    return GatewayKey(private, {})


def load_retired(paths: DataPaths) -> dict[str, Ed25519PublicKey]:
    retired: dict[str, Ed25519PublicKey] = {}
    if paths.old_signing_keys.is_dir():
        for file in sorted(paths.old_signing_keys.glob("*.pub")):
            key = load_public(file.read_text(), str(file))
            retired[fingerprint(key)] = key
    return retired


def _load_retired_raw(paths: DataPaths) -> dict[str, bytes] | None:
    """`load_retired` as raw keys, read by `store.sshkey`; None if one needs `cryptography`."""
    retired: dict[str, bytes] = {}
    if paths.old_signing_keys.is_dir():
        for file in sorted(paths.old_signing_keys.glob("*.pub")):
            raw = sshkey.parse_public(file.read_text())
            if raw is None:
                return None
            retired[sshkey.fingerprint_raw(raw)] = raw
    return retired


def load(paths: DataPaths) -> GatewayKey:
    path = paths.signing_key
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"{path}: no gateway signing key (run `lbm init`)") from None
    pair = sshkey.parse_private(data)
    retired = _load_retired_raw(paths) if pair is not None else None
    if pair is not None and retired is not None:
        return GatewayKey.from_raw(pair[0], pair[1], retired, str(path))
    return GatewayKey(_load_private(path, data), load_retired(paths))


def load_public_keys(paths: DataPaths) -> dict[str, Ed25519PublicKey]:
    """Every public key found in keys/, to look signers up by; not a trust anchor (anyone who
    can write keys/ can add one): `parse_allowed_signers` gives the pinned keys."""
    keys = load_retired(paths)
    if paths.signing_pub.exists():
        key = load_public(paths.signing_pub.read_text(), str(paths.signing_pub))
        keys[fingerprint(key)] = key
    return keys


def rotate(paths: DataPaths, comment: str) -> tuple[str, str]:
    """Retire the current key (its public half stays for verification) and make a new one.

    Unaudited: the audit log then refuses the new key, as it would any key it was not told
    about. `AuditLog.rotate_key` (what `lbm keys rotate-signing` runs) is the audited rotation.
    Returns (old fingerprint, new fingerprint).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    old = load(paths)
    ensure_dir(paths.old_signing_keys)
    old_fp = old.fingerprint
    atomic_write(
        paths.old_signing_keys / f"{old_fp}.pub",
        (public_openssh(old.public, comment) + "\n").encode(),
        mode=0o600,
    )
    private = Ed25519PrivateKey.generate()
    _write_pair(paths, private, comment)
    os.sync()
    return old_fp, fingerprint(private.public_key())


def _next_path(paths: DataPaths) -> Path:
    return paths.signing_key.with_name(paths.signing_key.name + ".next")


def _load_private(path: Path, data: bytes | None = None) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if data is None:
        data = path.read_bytes()
    try:
        private = serialization.load_ssh_private_key(data, password=None)
    except ValueError as exc:
        raise KeyError_(f"{path}: not an OpenSSH private key ({exc})") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 key")
    return private


def stage_next(paths: DataPaths) -> Ed25519PrivateKey:
    """Make the next signing key and keep it (0600) beside the current one until installed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    atomic_write(_next_path(paths), pem, mode=0o600)
    return private


def install_next(paths: DataPaths, comment: str, expect_fp: str | None = None) -> GatewayKey:
    """Retire the current public key and make the staged key current; returns the new key.

    With `expect_fp`, only a staged key with that fingerprint is installed (crash recovery).
    """
    staged = _next_path(paths)
    if not staged.exists():
        raise KeyError_(f"{staged}: no staged signing key")
    private = _load_private(staged)
    if expect_fp is not None and fingerprint(private.public_key()) != expect_fp:
        raise KeyError_(f"{staged}: staged key is not {expect_fp}")
    if paths.signing_key.exists():
        old = _load_private(paths.signing_key).public_key()
        ensure_dir(paths.old_signing_keys)
        atomic_write(
            paths.old_signing_keys / f"{fingerprint(old)}.pub",
            (public_openssh(old, comment) + "\n").encode(),
            mode=0o644,
        )
    os.replace(staged, paths.signing_key)
    fsync_dir(paths.keys)
    pub = public_openssh(private.public_key(), comment) + "\n"
    atomic_write(paths.signing_pub, pub.encode(), mode=0o644)
    return GatewayKey(private, load_retired(paths))


_ED25519 = re.compile(r"(?:^|\s)ssh-ed25519\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)")


def parse_allowed_signers(
    text: str, where: str, principal: str | None = None
) -> dict[str, Ed25519PublicKey]:
    """The ssh-ed25519 keys of an OpenSSH allowed-signers file (the line `lbm status` prints).

    With `principal`, only lines listing it (comma-separated, first field) count. Options such as
    `namespaces=` are ignored: the audit log is not an SSHSIG signature.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = _ED25519.search(line)
        if found is None:
            continue
        if principal is not None and principal not in line.split()[0].split(","):
            continue
        key = load_public(f"ssh-ed25519 {found.group(1)}", f"{where}:{number}")
        keys[fingerprint(key)] = key
    if not keys:
        whom = f" for principal {principal!r}" if principal else ""
        raise KeyError_(f"{where}: no ssh-ed25519 key{whom}")
    return keys

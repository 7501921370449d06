"""store.sshkey: the gateway key read without `cryptography` must be exactly the key
`cryptography` reads, and never a key `cryptography` would refuse (start-up, docs/startup.md).

Keys come from `cryptography` and from the real `ssh-keygen`; corrupted files flip every byte
of the decoded key in turn: whatever the fast reader accepts, `cryptography` accepts with the
same seed and public key. `store.signing.load` then signs and fingerprints as before."""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from store import KeyError_, signing, sshkey
from store.paths import DataPaths

RAW = serialization.Encoding.Raw
OPENSSH = (
    serialization.Encoding.PEM,
    serialization.PrivateFormat.OpenSSH,
    serialization.NoEncryption(),
)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(*OPENSSH)


def _by_cryptography(data: bytes) -> tuple[bytes, bytes] | None:
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    seed = key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return seed, key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def _armor(raw: bytes) -> bytes:
    body = base64.b64encode(raw).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    ).encode()


def _decoded(pem: bytes) -> bytes:
    m = re.search(rb"KEY-----(.*?)-----END", pem, re.DOTALL)
    assert m is not None
    return binascii.a2b_base64(m.group(1))


def _ssh_keygen(tmp_path: Path, comment: str, passphrase: str = "") -> bytes:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / f"k{len(comment)}{passphrase}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.read_bytes()


def test_keys_from_cryptography_and_ssh_keygen_read_the_same(tmp_path: Path) -> None:
    files = [_pem(Ed25519PrivateKey.generate()) for _ in range(3)]
    # comments of every length modulo the 8-byte block: every padding length
    files += [_ssh_keygen(tmp_path, "c" * n) for n in range(8)]
    for data in files:
        fast = sshkey.parse_private(data)
        assert fast is not None
        assert fast == _by_cryptography(data)


def test_no_corrupted_key_is_read_differently() -> None:
    raw = _decoded(_pem(Ed25519PrivateKey.generate()))
    accepted = 0
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            data = _armor(raw[:i] + bytes([raw[i] ^ flip]) + raw[i + 1 :])
            fast = sshkey.parse_private(data)
            if fast is None:
                continue
            # whatever the fast reader accepts, cryptography reads with the same seed...
            accepted += 1
            slow = _by_cryptography(data)
            assert slow is not None and fast[0] == slow[0], f"byte {i} ^ {flip:#x}"
            if fast[1] != slow[1]:  # ...and a seed that is not the stored key's never signs
                key = signing.GatewayKey.from_raw(fast[0], fast[1], {}, "k")
                with pytest.raises(KeyError_, match="public half does not match"):
                    key.sign(b"x")
    # flips of the seed (and of the unchecked comment bytes) stay readable
    assert accepted >= 32
    for cut in (len(raw) - 1, len(raw) - 8, 40, 0):
        assert sshkey.parse_private(_armor(raw[:cut])) is None
    assert sshkey.parse_private(_armor(raw + b"\x00" * 8)) is None  # trailing bytes
    assert sshkey.parse_private(b"not a key") is None


def test_other_keys_fall_back_to_cryptography(tmp_path: Path) -> None:
    encrypted = _ssh_keygen(tmp_path, "x", passphrase="secret-pass")
    assert sshkey.parse_private(encrypted) is None  # cryptography words the refusal
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(*OPENSSH)
    assert sshkey.parse_private(ecdsa) is None


def test_public_lines() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    line = signing.public_openssh(key, "gw1 retired")
    raw = key.public_bytes(RAW, serialization.PublicFormat.Raw)
    assert sshkey.parse_public(line) == raw
    assert sshkey.parse_public(line.split(" gw1")[0] + "\n") == raw
    assert sshkey.fingerprint_raw(raw) == signing.fingerprint(key)
    blob = base64.b64decode(line.split()[1])
    for bad in (
        "ssh-rsa " + line.split()[1],
        "ssh-ed25519 " + base64.b64encode(blob + b"\x00").decode(),  # trailing bytes
        "ssh-ed25519 " + base64.b64encode(blob[:-1]).decode(),
        "ssh-ed25519 !!!!",
        "",
    ):
        assert sshkey.parse_public(bad) is None, bad


def _data_dir(tmp_path: Path) -> DataPaths:
    paths = DataPaths(tmp_path / "data")
    signing.create(paths, "gw1")
    return paths


def test_load_signs_and_fingerprints_as_before(tmp_path: Path) -> None:
    paths = _data_dir(tmp_path)
    signing.rotate(paths, "gw1")  # one retired key, read lazily too
    key = signing.load(paths)
    reference = serialization.load_ssh_private_key(paths.signing_key.read_bytes(), password=None)
    assert isinstance(reference, Ed25519PrivateKey)
    assert key.fingerprint == signing.fingerprint(reference.public_key())
    retired = signing.load_retired(paths)
    assert len(retired) == 1
    raw = serialization.PublicFormat.Raw
    assert {fp: k.public_bytes(RAW, raw) for fp, k in retired.items()} == {
        fp: k.public_bytes(RAW, raw) for fp, k in key.retired.items()
    }
    sig = key.sign(b"entry")
    assert signing.verify(key.known_keys(), key.fingerprint, b"entry", sig)
    assert not signing.verify(key.known_keys(), key.fingerprint, b"other", sig)
    assert key.fingerprint == signing.fingerprint(key.public)


def test_a_key_whose_halves_disagree_never_signs(tmp_path: Path) -> None:
    paths = _data_dir(tmp_path)
    raw = _decoded(paths.signing_key.read_bytes())
    seed, public = sshkey.parse_private(paths.signing_key.read_bytes()) or (b"", b"")
    other = Ed25519PrivateKey.generate().private_bytes(
        RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.count(seed) == 1
    paths.signing_key.write_bytes(_armor(raw.replace(seed, other)))
    key = signing.load(paths)  # cryptography would load it too (it never checks the seed)
    assert key.fingerprint == sshkey.fingerprint_raw(public)
    with pytest.raises(KeyError_, match="public half does not match"):
        key.sign(b"entry")


def test_broken_key_files_keep_their_errors(tmp_path: Path) -> None:
    paths = _data_dir(tmp_path)
    paths.signing_key.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(KeyError_, match="not an OpenSSH private key"):
        signing.load(paths)
    paths.signing_key.unlink()
    with pytest.raises(KeyError_, match="no gateway signing key"):
        signing.load(paths)


def test_public_key_objects_are_cryptography_keys(tmp_path: Path) -> None:
    key = signing.load(_data_dir(tmp_path))
    assert isinstance(key.public, Ed25519PublicKey)
    assert signing.public_openssh(key.public).startswith("ssh-ed25519 ")

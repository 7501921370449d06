"""SSHSIG against the real `ssh-keygen -Y`: both ways, byte for byte, and every refusal an attacker
would try (another key, another message, another namespace, tampered armor, a signer not allowed)
checked with ssh-keygen too, so ours refuses exactly where OpenSSH does."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from store import StoreError, sshsig
from store import sshsig_wire as wire
from store.sshsig import SshsigError

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None,
    reason="ssh-keygen is not installed (apt-get install openssh-client)",
)

NS = "lbm-ca1"
CANARY = b"CANARY-officer-statement-7f3a"


@dataclass(frozen=True)
class Key:
    path: Path
    pub: str  # the .pub file's line, with comment


def _keygen(directory: Path, name: str, *args: str) -> Key:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", f"{name}@test", "-f", str(path), *args],
        check=True,
        capture_output=True,
    )
    return Key(path, path.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    """Keys made by ssh-keygen itself, one per supported type plus a second Ed25519 key."""
    d = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": _keygen(d, "ed", "-t", "ed25519"),
        "other": _keygen(d, "other", "-t", "ed25519"),
        "rsa": _keygen(d, "rsa", "-t", "rsa", "-b", "3072"),
        "ecdsa": _keygen(d, "ecdsa", "-t", "ecdsa", "-b", "256"),
    }


def _ssh_sign(key: Key, message: bytes, namespace: str = NS, *opts: str) -> bytes:
    done = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(key.path), "-n", namespace, *opts],
        input=message,
        capture_output=True,
        check=True,
    )
    return done.stdout


def _ssh_verify(
    tmp_path: Path,
    signature: bytes,
    message: bytes,
    allowed: str,
    principal: str = "p12345",
    namespace: str = NS,
    *opts: str,
) -> bool:
    (tmp_path / "allowed").write_text(allowed)
    (tmp_path / "msg.sig").write_bytes(signature)
    done = subprocess.run(
        [
            *("ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", principal),
            *("-n", namespace, "-s", str(tmp_path / "msg.sig"), *opts),
        ],
        input=message,
        capture_output=True,
    )
    return done.returncode == 0


def _ssh_check_novalidate(tmp_path: Path, signature: bytes, message: bytes, namespace: str) -> bool:
    (tmp_path / "msg.sig").write_bytes(signature)
    done = subprocess.run(
        ["ssh-keygen", "-Y", "check-novalidate", "-n", namespace, "-s", str(tmp_path / "msg.sig")],
        input=message,
        capture_output=True,
    )
    return done.returncode == 0


# -- signing: byte-identical to ssh-keygen, and verified by it ---------------------------------


@pytest.mark.parametrize(
    ("message", "namespace"),
    [
        pytest.param(b"", NS, id="empty"),
        pytest.param(b"hello\n", "lbm-evidence", id="line"),
        pytest.param(bytes(range(256)) * 1000, "file", id="256k-binary"),
        pytest.param("ausführlich\r\n".encode(), "namespace with spaces", id="crlf"),
    ],
)
def test_sign_is_byte_identical_to_ssh_keygen(
    keys: dict[str, Key], message: bytes, namespace: str
) -> None:
    ours = sshsig.sign(sshsig.load_private_key(keys["ed25519"].path), message, namespace)
    assert ours == _ssh_sign(keys["ed25519"], message, namespace)
    assert ours.startswith(b"-----BEGIN SSH SIGNATURE-----\n")
    assert ours.endswith(b"\n-----END SSH SIGNATURE-----\n")


def test_ssh_keygen_verifies_ours(keys: dict[str, Key], tmp_path: Path) -> None:
    key = keys["ed25519"]
    ours = sshsig.sign(sshsig.load_private_key(key.path), CANARY, NS)
    allowed = f'p12345 namespaces="{NS}" {key.pub}\n'
    assert _ssh_verify(tmp_path, ours, CANARY, allowed)
    assert _ssh_check_novalidate(tmp_path, ours, CANARY, NS)
    # and ssh-keygen is a real check here: it refuses our signature over another message
    assert not _ssh_verify(tmp_path, ours, CANARY + b"!", allowed)
    assert not _ssh_check_novalidate(tmp_path, ours, CANARY, "lbm-evidence")


def test_public_key_line_and_fingerprint_match_ssh_keygen(keys: dict[str, Key]) -> None:
    for key in keys.values():
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(key.path.with_suffix(".pub"))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert sshsig.fingerprint(key.pub) == listed[1]
    ed = keys["ed25519"]
    private = sshsig.load_private_key(ed.path)
    assert sshsig.public_key_line(private.public_key(), "ed@test") == ed.pub
    signed = sshsig.sign(private, b"x", NS)
    assert sshsig.signature_public_key(signed) == " ".join(ed.pub.split()[:2])


# -- verifying ssh-keygen's signatures ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "opts", "sig_alg", "hash_alg"),
    [
        pytest.param("ed25519", (), "ssh-ed25519", "sha512", id="ed25519"),
        pytest.param("rsa", (), "rsa-sha2-512", "sha512", id="rsa-sha512"),
        pytest.param("ecdsa", (), "ecdsa-sha2-nistp256", "sha512", id="ecdsa-p256"),
        pytest.param("ed25519", ("-O", "hashalg=sha256"), "ssh-ed25519", "sha256", id="ed-sha256"),
        pytest.param("rsa", ("-O", "hashalg=sha256"), "rsa-sha2-512", "sha256", id="rsa-sha256"),
    ],
)
def test_we_verify_ssh_keygen_signatures(
    keys: dict[str, Key], kind: str, opts: tuple[str, ...], sig_alg: str, hash_alg: str
) -> None:
    key = keys[kind]
    message = CANARY * 100
    signature = _ssh_sign(key, message, NS, *opts)
    blob = wire.parse_blob(wire.dearmor(signature))
    assert (blob.sig_alg, blob.hash_alg) == (sig_alg, hash_alg)
    sshsig.verify(signature, message, NS, key.pub)
    sshsig.verify(signature.decode(), message, NS, key.pub)  # str works too
    assert sshsig.signature_public_key(signature) == " ".join(key.pub.split()[:2])
    with pytest.raises(SshsigError, match="does not verify"):
        sshsig.verify(signature, message[:-1], NS, key.pub)
    with pytest.raises(SshsigError, match="made by SHA256:"):
        sshsig.verify(signature, message, NS, keys["other"].pub)


# -- refusals, each also refused by ssh-keygen ---------------------------------------------


def _flip_armor(signature: bytes, line: int) -> bytes:
    lines = signature.split(b"\n")
    text = bytearray(lines[line])
    text[10] = ord("A") if text[10] != ord("A") else ord("B")
    lines[line] = bytes(text)
    return b"\n".join(lines)


@dataclass(frozen=True)
class Refusal:
    signer: str  # who made the signature
    signed: bytes  # what was signed
    checked: bytes  # what is checked
    namespace: str  # namespace the check asks for
    change: str = ""  # how the armor is tampered with
    match: str = "does not verify"


REFUSALS = [
    pytest.param(Refusal("other", b"statement", b"statement", NS, match="made by"), id="other-key"),
    pytest.param(Refusal("ed25519", b"statement", b"statemenu", NS), id="changed-byte"),
    pytest.param(
        Refusal("ed25519", b"statement", b"statement", "file", match="namespace"), id="ns"
    ),
    pytest.param(Refusal("ed25519", b"application 1", b"application 2", NS), id="other-message"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "sig-byte", "does not verify"), id="sig-byte"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "key-byte", "."), id="key-byte"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "rsa-key-byte", "."), id="rsa-tamper"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "no-end", "no -----END"), id="no-end"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "garbage", "after the end"), id="garbage"),
    pytest.param(Refusal("ed25519", b"s", b"s", NS, "no-begin", "does not start"), id="no-begin"),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_agree_with_ssh_keygen(
    keys: dict[str, Key], tmp_path: Path, case: Refusal
) -> None:
    signer = keys["rsa" if case.change == "rsa-key-byte" else case.signer]
    signature = _ssh_sign(signer, case.signed)
    if case.change == "sig-byte":
        signature = _flip_armor(signature, -3)  # in the signature value, near the end
    elif case.change in ("key-byte", "rsa-key-byte"):
        signature = _flip_armor(signature, 1)  # in the embedded public key
    elif case.change == "no-end":
        signature = signature.replace(b"-----END SSH SIGNATURE-----\n", b"")
    elif case.change == "garbage":
        signature += b"more\n"
    elif case.change == "no-begin":
        signature = signature.replace(b"-----BEGIN SSH SIGNATURE-----\n", b"")
    key = keys["ed25519"].pub if case.change != "rsa-key-byte" else signer.pub
    with pytest.raises(SshsigError, match=case.match) as caught:
        sshsig.verify(signature, case.checked, case.namespace, key)
    assert CANARY not in str(caught.value).encode()
    allowed = f"p12345 {key}\n"
    if case.change != "garbage":  # ssh-keygen ignores what follows its end marker; we do not
        assert not _ssh_verify(tmp_path, signature, case.checked, allowed, namespace=case.namespace)
    with pytest.raises(SshsigError):
        sshsig.verify_allowed(
            signature, case.checked, case.namespace, sshsig.parse_allowed_signers(allowed)
        )


def _crafted(private: Ed25519PrivateKey, hash_alg: str, reserved: bytes = b"") -> bytes:
    """A correctly signed blob with a hash algorithm or reserved field ssh-keygen never writes."""
    digest = hashlib.new(hash_alg, CANARY).digest()
    data = wire.MAGIC + b"".join(
        wire.ssh_string(x) for x in (NS.encode(), reserved, hash_alg.encode(), digest)
    )
    pub = wire.key_blob(private.public_key())
    sig = private.sign(data)
    blob = wire.build_blob(pub, NS, hash_alg, "ssh-ed25519", sig)
    if reserved:
        marker = wire.ssh_string(NS.encode()) + wire.ssh_string(b"")
        blob = blob.replace(marker, wire.ssh_string(NS.encode()) + wire.ssh_string(reserved), 1)
    return wire.armor(blob)


def _renamed_hash(private: Ed25519PrivateKey) -> bytes:
    """A sha512 signature whose hash name is written `SHA512` (OpenSSH compares exactly)."""
    blob = wire.dearmor(sshsig.sign(private, CANARY, NS))
    return wire.armor(blob.replace(wire.ssh_string(b"sha512"), wire.ssh_string(b"SHA512"), 1))


@pytest.mark.parametrize("hash_alg", ["sha1", "md5", "sha384", "SHA512"])
def test_hash_algorithms_other_than_sha256_sha512_are_refused(
    keys: dict[str, Key], hash_alg: str
) -> None:
    private = sshsig.load_private_key(keys["ed25519"].path)
    signature = _renamed_hash(private) if hash_alg == "SHA512" else _crafted(private, hash_alg)
    with pytest.raises(SshsigError, match="is not sha256 or sha512"):
        sshsig.verify(signature, CANARY, NS, keys["ed25519"].pub)


def test_reserved_field_and_non_canonical_encodings_are_refused(keys: dict[str, Key]) -> None:
    private = sshsig.load_private_key(keys["ed25519"].path)
    with pytest.raises(SshsigError, match="reserved"):
        sshsig.verify(_crafted(private, "sha512", b"x"), CANARY, NS, keys["ed25519"].pub)
    blob = wire.dearmor(sshsig.sign(private, CANARY, NS))
    with pytest.raises(SshsigError, match="trailing"):
        sshsig.verify(wire.armor(blob + b"\0"), CANARY, NS, keys["ed25519"].pub)
    for bad in ("", "a\0b"):
        with pytest.raises(SshsigError, match="namespace is empty or holds a NUL"):
            sshsig.sign(private, CANARY, bad)
    with pytest.raises(SshsigError, match="version"):
        sshsig.verify(wire.armor(blob[:9] + b"\2" + blob[10:]), CANARY, NS, keys["ed25519"].pub)


def test_signature_algorithm_must_fit_the_key(keys: dict[str, Key]) -> None:
    # an RSA signature relabelled as SHA-1 ssh-rsa, which OpenSSH refuses for SSHSIG
    parsed = wire.parse_blob(wire.dearmor(_ssh_sign(keys["rsa"], CANARY)))
    blob = wire.build_blob(parsed.key_blob, NS, parsed.hash_alg, "ssh-rsa", parsed.sig)
    with pytest.raises(SshsigError, match="algorithm 'ssh-rsa'"):
        sshsig.verify(wire.armor(blob), CANARY, NS, keys["rsa"].pub)


# -- allowed signers ------------------------------------------------------------------------


def test_verify_allowed_principals_namespaces_and_time(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    ed, other = keys["ed25519"], keys["other"]
    text = (
        "# officers\n"
        f'p12345,!p99999 namespaces="lbm-ca1,lbm-review",valid-after="20260101",'
        f'valid-before="20261231235959Z" {ed.pub}\n'
        f'"p2*" {other.pub}\n'
    )
    signers = sshsig.parse_allowed_signers(text, "signers")
    assert signers[0].principals == ("p12345", "!p99999")
    assert signers[0].namespaces == ("lbm-ca1", "lbm-review")
    assert signers[0].valid_before == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    signature = _ssh_sign(ed, CANARY)
    june = datetime(2026, 6, 1, tzinfo=UTC)
    entry = sshsig.verify_allowed(signature, CANARY, NS, signers, "p12345", june)
    assert entry is signers[0]
    assert sshsig.verify_allowed(signature, CANARY, NS, signers, at=june) is signers[0]

    def refused(match: str, principal: str | None, at: datetime, namespace: str = NS) -> None:
        with pytest.raises(SshsigError, match=match):
            sshsig.verify_allowed(
                _ssh_sign(ed, CANARY, namespace), CANARY, namespace, signers, principal, at
            )

    refused("not allowed as 'p22222'", "p22222", june)  # principal not listed for this key
    refused("not allowed namespace 'file'", "p12345", june, "file")
    refused("not valid at 2027-01-01", "p12345", datetime(2027, 1, 1, tzinfo=UTC))  # expired
    refused("not valid at 2025", "p12345", datetime(2025, 12, 31, tzinfo=UTC))  # not yet valid
    other_sig = _ssh_sign(other, CANARY)
    assert sshsig.verify_allowed(other_sig, CANARY, NS, signers, "p2000", june) is signers[1]
    with pytest.raises(SshsigError, match="not in the allowed signers"):
        sshsig.verify_allowed(_ssh_sign(keys["rsa"], CANARY), CANARY, NS, signers, None, june)
    # ssh-keygen reads the same file the same way
    ok = (NS, "-Overify-time=20260601")
    assert _ssh_verify(tmp_path, signature, CANARY, text, "p12345", *ok)
    assert not _ssh_verify(tmp_path, signature, CANARY, text, "p22222", *ok)
    assert not _ssh_verify(
        tmp_path, signature, CANARY, text, "p12345", NS, "-Overify-time=20270101"
    )


def test_negated_principal_is_refused(keys: dict[str, Key], tmp_path: Path) -> None:
    text = f"p*,!p99999 {keys['ed25519'].pub}\n"
    signers = sshsig.parse_allowed_signers(text)
    signature = _ssh_sign(keys["ed25519"], CANARY)
    sshsig.verify_allowed(signature, CANARY, NS, signers, "p12345")
    with pytest.raises(SshsigError, match="not allowed as"):
        sshsig.verify_allowed(signature, CANARY, NS, signers, "p99999")
    assert not _ssh_verify(tmp_path, signature, CANARY, text, "p99999")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param("p1 cert-authority {pub}", "cert-authority is not supported", id="ca"),
        pytest.param('p1 bogus="x" {pub}', "unsupported option 'bogus'", id="option"),
        pytest.param("p1 namespaces=x {pub}", "needs a quoted value", id="unquoted"),
        pytest.param('p1 namespaces="x {pub}', "closing quote|malformed", id="open-quote"),
        pytest.param('p1 valid-before="2026" {pub}', "not YYYYMMDD", id="time"),
        pytest.param('p1 valid-before="20261301" {pub}', "not a valid date", id="month"),
        pytest.param(
            'p1 valid-after="20270101",valid-before="20260101" {pub}', "earlier", id="window"
        ),
        pytest.param("p1", "no public key", id="no-key"),
        pytest.param("p1 ssh-ed25519 AAAA", "not valid base64|truncated", id="short-key"),
        pytest.param("p1 ssh-dss AAAAB3NzaC1kc3MAAA==", "not supported", id="dsa"),
        pytest.param("p1 ssh-rsa {b64}", "another type", id="type-mismatch"),
        pytest.param('"p1 {pub}', "unterminated", id="quote"),
        pytest.param(",p1 {pub}", "empty or unprintable", id="empty-principal"),
    ],
)
def test_allowed_signers_errors_name_file_and_line(
    keys: dict[str, Key], line: str, problem: str
) -> None:
    pub = keys["ed25519"].pub
    text = f"# first\n\np0 {pub}\n" + line.format(pub=pub, b64=pub.split()[1]) + "\n"
    with pytest.raises(SshsigError, match=rf"^signers:4: .*({problem})"):
        sshsig.parse_allowed_signers(text, "signers")


def test_small_rsa_keys_are_refused(tmp_path: Path) -> None:
    small = _keygen(tmp_path, "small", "-t", "rsa", "-b", "1024")
    with pytest.raises(SshsigError, match="RSA key of 1024 bits"):
        sshsig.verify(_ssh_sign(small, CANARY), CANARY, NS, small.pub)


# -- private key files ----------------------------------------------------------------------


def test_load_private_key_refusals(keys: dict[str, Key], tmp_path: Path) -> None:
    assert issubclass(SshsigError, StoreError)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SshsigError, match="not a regular file"):
        sshsig.load_private_key(fifo)  # and it does not hang
    with pytest.raises(SshsigError, match="cannot open"):
        sshsig.load_private_key(tmp_path / "missing")
    with pytest.raises(SshsigError, match="not an Ed25519 key"):
        sshsig.load_private_key(keys["rsa"].path)
    with pytest.raises(SshsigError, match="not an OpenSSH private key"):
        sshsig.load_private_key(keys["ed25519"].path.with_suffix(".pub"))
    locked = _keygen(tmp_path, "locked", "-t", "ed25519")
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(locked.path)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(SshsigError, match="encrypted"):
        sshsig.load_private_key(locked.path)


# -- properties -----------------------------------------------------------------------------

_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_PUB = sshsig.public_key_line(_KEY.public_key())
_namespaces = st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s)


@settings(max_examples=150, deadline=None)
@given(message=st.binary(max_size=4096), namespace=_namespaces, flip=st.integers(min_value=0))
def test_round_trip_and_any_changed_byte_refused(message: bytes, namespace: str, flip: int) -> None:
    signature = sshsig.sign(_KEY, message, namespace)
    sshsig.verify(signature, message, namespace, _PUB)
    signer = sshsig.AllowedSigner(("p1",), _PUB + " comment")
    assert sshsig.verify_allowed(signature, message, namespace, [signer], "p1") == signer
    changed = bytearray(message + b"\0")
    changed[flip % len(changed)] ^= 0x01
    with pytest.raises(SshsigError):
        sshsig.verify(signature, bytes(changed), namespace, _PUB)
    with pytest.raises(SshsigError):
        sshsig.verify(signature, message, namespace + "x", _PUB)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_decoder_on_arbitrary_bytes_raises_only_sshsig_error(data: bytes) -> None:
    armored = wire.armor(data)
    for candidate in (data, armored, b"-----BEGIN SSH SIGNATURE-----\n" + data):
        with pytest.raises(SshsigError):
            sshsig.verify(candidate, b"", NS, _PUB)


def test_ssh_keygen_verifies_hypothesis_style_namespaces(tmp_path: Path) -> None:
    private = tmp_path / "k"
    private.write_bytes(
        _KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    for namespace in ("lbm-evidence", "ünïcode", "a b,c"):
        ours = sshsig.sign(_KEY, CANARY, namespace)
        assert ours == _ssh_sign(Key(private, _PUB), CANARY, namespace)
        assert _ssh_check_novalidate(tmp_path, ours, CANARY, namespace)
        assert base64.b64decode(b"".join(ours.split(b"\n")[1:-2]))[:6] == b"SSHSIG"

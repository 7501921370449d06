"""The age v1 implementation against the real `age` / `age-keygen` binaries, both ways, plus
property tests for streaming round trips, truncation and tampering."""

from __future__ import annotations

import hashlib
import hmac
import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from store import agefile as age

CHUNK = age.CHUNK
needs_age = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("age-keygen") is None,
    reason="the `age` Debian package is not installed (apt-get install age)",
)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _keygen(path: Path) -> tuple[str, str]:
    """A real age-keygen identity file: (file text, public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path.read_text(), public


def _encrypt(data: bytes, recipients: list[str], pieces: list[int] | None = None) -> bytes:
    out = io.BytesIO()
    writer = age.AgeWriter(out, recipients)
    view = memoryview(data)
    for size in pieces or [len(data)]:
        writer.write(view[:size])
        view = view[size:]
    writer.write(view)
    writer.close()
    return out.getvalue()


@needs_age
def test_keys_agree_with_age_keygen(tmp_path: Path) -> None:
    text, public = _keygen(tmp_path / "k.txt")
    identities = age.parse_identity_file(text)
    assert age.encode_recipient(identities[0].public_key()) == public
    secret_line = next(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    assert age.encode_identity(identities[0]) == secret_line
    # and the other way: our generated identity file is read by age-keygen -y
    secret, ours = age.generate()
    (tmp_path / "ours.txt").write_text(age.identity_file_text(secret, ["test"]))
    out = subprocess.run(
        ["age-keygen", "-y", str(tmp_path / "ours.txt")], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == ours


@needs_age
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 300_000])
def test_age_cli_decrypts_ours_and_we_decrypt_age_cli(tmp_path: Path, size: int) -> None:
    text, public = _keygen(tmp_path / "k.txt")
    plain = _data(size, size)
    (tmp_path / "ours.age").write_bytes(_encrypt(plain, [public], [size // 3, 7]))
    out = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "k.txt"), str(tmp_path / "ours.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert out == plain
    (tmp_path / "p.bin").write_bytes(plain)
    subprocess.run(
        ["age", "-r", public, "-o", str(tmp_path / "theirs.age"), str(tmp_path / "p.bin")],
        check=True,
    )
    with (tmp_path / "theirs.age").open("rb") as fh:
        assert age.AgeReader(fh, age.parse_identity_file(text)).read_all() == plain


@needs_age
def test_multiple_recipients_each_decrypt_with_age(tmp_path: Path) -> None:
    _, pub1 = _keygen(tmp_path / "a.txt")
    _, pub2 = _keygen(tmp_path / "b.txt")
    _, pub3 = _keygen(tmp_path / "c.txt")
    (tmp_path / "x.age").write_bytes(_encrypt(b"for two", [pub1, pub2]))
    for name in ("a.txt", "b.txt"):
        out = subprocess.run(
            ["age", "-d", "-i", str(tmp_path / name), str(tmp_path / "x.age")],
            check=True,
            capture_output=True,
        ).stdout
        assert out == b"for two"
    refused = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "c.txt"), str(tmp_path / "x.age")], capture_output=True
    )
    assert refused.returncode != 0 and pub3


def test_wrong_identity_is_refused_clearly() -> None:
    _, public = age.generate()
    other, _ = age.generate()
    with pytest.raises(age.AgeError, match="no identity matched"):
        age.decrypt_bytes(_encrypt(b"x", [public]), [other])


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3 * CHUNK + 5),
    cuts=st.lists(st.integers(0, CHUNK + 3), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_round_trip_any_size_any_write_split(size: int, cuts: list[int], seed: int) -> None:
    secret, public = age.generate()
    plain = _data(size, seed)
    blob = _encrypt(plain, [public], cuts)
    chunks = max(1, -(-size // CHUNK))
    assert len(blob) - age.header_length(io.BytesIO(blob)) == size + 16 * chunks
    reader = age.AgeReader(io.BytesIO(blob), [secret])
    assert reader.read_all() == plain
    assert not reader.truncated


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 3 * CHUNK), where=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_truncated_file_yields_authenticated_prefix_flagged(
    size: int, where: float, seed: int
) -> None:
    secret, public = age.generate()
    plain = _data(size, seed)
    blob = _encrypt(plain, [public])
    start = age.header_length(io.BytesIO(blob))
    cut = start + int((len(blob) - start - 1) * where)
    short = blob[:cut]
    with pytest.raises(age.AgeError, match=r"truncated|cut off"):
        age.AgeReader(io.BytesIO(short), [secret]).read_all()
    reader = age.AgeReader(io.BytesIO(short), [secret], allow_truncated=True)
    prefix = reader.read_all()
    assert reader.truncated
    assert plain.startswith(prefix)
    whole_chunks = (cut - start) // (CHUNK + 16)
    assert len(prefix) == whole_chunks * CHUNK


def test_cut_exactly_after_a_whole_chunk_is_still_truncated() -> None:
    secret, public = age.generate()
    plain = _data(3 * CHUNK + 10)
    blob = _encrypt(plain, [public])
    start = age.header_length(io.BytesIO(blob))
    reader = age.AgeReader(
        io.BytesIO(blob[: start + 2 * (CHUNK + 16)]), [secret], allow_truncated=True
    )
    assert reader.read_all() == plain[: 2 * CHUNK]
    assert reader.truncated


@settings(max_examples=40, deadline=None)
@given(position=st.floats(0, 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(position: float, bit: int) -> None:
    secret, public = age.generate()
    plain = _data(2 * CHUNK + 100)
    blob = bytearray(_encrypt(plain, [public]))
    index = int((len(blob) - 1) * position)
    blob[index] ^= 1 << bit
    with pytest.raises(age.AgeError):
        age.AgeReader(io.BytesIO(bytes(blob)), [secret]).read_all()
    # when reading a possibly cut-off file, damage is either refused or reported as a cut:
    # nothing unauthenticated is ever returned
    try:
        reader = age.AgeReader(io.BytesIO(bytes(blob)), [secret], allow_truncated=True)
        prefix = reader.read_all()
    except age.AgeError:
        return
    assert reader.truncated
    assert len(prefix) < len(plain) and plain.startswith(prefix)


def test_trailing_garbage_after_last_chunk_is_refused() -> None:
    secret, public = age.generate()
    blob = _encrypt(_data(CHUNK), [public]) + b"extra"
    with pytest.raises(age.AgeError):
        age.decrypt_bytes(blob, [secret])


def test_bad_keys_get_clear_errors() -> None:
    with pytest.raises(age.AgeError, match="age recipient"):
        age.parse_recipient("age1notakey")
    secret, public = age.generate()
    with pytest.raises(age.AgeError, match="bad checksum"):
        age.parse_recipient(public[:-1] + ("q" if public[-1] != "q" else "p"))
    with pytest.raises(age.AgeError, match=r"keys.txt:2"):
        age.parse_identity_file(f"# comment\nAGE-SECRET-KEY-1BROKEN\n{secret}\n", "keys.txt")
    with pytest.raises(age.AgeError, match="no AGE-SECRET-KEY-1"):
        age.parse_identity_file("# only comments\n\n")
    with pytest.raises(age.AgeError, match="not an age v1 file"):
        age.decrypt_bytes(b"hello\n", [secret])


def test_writer_holds_at_most_one_chunk() -> None:
    written: list[int] = []

    class Counting:
        def write(self, data: bytes) -> int:
            written.append(len(data))
            return len(data)

    _, public = age.generate()
    writer = age.AgeWriter(Counting(), [public])
    header = written[0]
    for _ in range(20):
        writer.write(b"\0" * 10_000)
    # 200000 bytes written so far: three full chunks are out, the rest is buffered
    assert written[1:] == [CHUNK + 16] * 3
    writer.close()
    assert written[1:] == [CHUNK + 16] * 3 + [200_000 - 3 * CHUNK + 16]
    assert header > 0


@needs_age
def test_batched_output_gets_every_sealed_chunk_before_write_returns(tmp_path: Path) -> None:
    """An output with write_many (the archive's writev path) gets chunks in bounded batches, all
    of them before `write` returns, and the result is still a file the real `age` decrypts."""
    batches: list[list[int]] = []
    parts: list[bytes] = []

    class Batched:
        def write(self, data: bytes) -> int:
            parts.append(bytes(data))
            return len(data)

        def write_many(self, chunks: list[bytes]) -> None:
            batches.append([len(c) for c in chunks])
            parts.extend(chunks)

    text, public = _keygen(tmp_path / "k.txt")
    writer = age.AgeWriter(Batched(), [public])
    data = _data(40 * CHUNK + 123)
    writer.write(data[:100])
    assert batches == []  # nothing to seal yet: the partial chunk waits
    writer.write(data[100:])  # 40 chunks become sealable, the 41st (partial, last) waits
    assert sum(map(len, batches)) == 40
    assert all(1 <= len(b) <= age.BATCH for b in batches)
    assert all(size == CHUNK + 16 for b in batches for size in b)
    writer.close()
    assert batches[-1] == [123 + 16]
    (tmp_path / "f.age").write_bytes(b"".join(parts))
    out = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "k.txt"), str(tmp_path / "f.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert out == data and text


def _file_with_stanza(extra: bytes, plain: bytes = b"hello") -> tuple[bytes, str]:
    """A file for a fresh identity whose header also holds `extra` (stanza lines), with a MAC
    that verifies, so the only thing wrong with it is that stanza. Returns (file, identity)."""
    secret, public = age.generate()
    file_key = bytes(range(16))
    header = age.build_header(file_key, [age.parse_recipient(public)])
    first, rest = header.split(b"\n", 1)
    text = first + b"\n" + extra + rest.rsplit(b"---", 1)[0] + b"---"
    mac = hmac.new(age.hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
    nonce = bytes(16)
    aead = ChaCha20Poly1305(age.hkdf(file_key, nonce, b"payload"))
    payload = aead.encrypt(age.chunk_nonce(0, True), plain, None)
    return text + b" " + age.b64(mac) + b"\n" + nonce + payload, secret


def _age_cli_decrypts(tmp_path: Path, blob: bytes, secret: str) -> bool:
    (tmp_path / "k.txt").write_text(secret + "\n")
    (tmp_path / "f.age").write_bytes(blob)
    done = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "k.txt"), str(tmp_path / "f.age")], capture_output=True
    )
    return done.returncode == 0


@needs_age
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(b"", None, id="control"),
        pytest.param(b"-> grease x\nAAAA\n", None, id="unknown-type-skipped"),
        pytest.param(b"-> \n\n", "empty or invalid stanza argument", id="empty-type"),
        pytest.param(b"-> X25519  a\n\n", "empty or invalid stanza argument", id="empty-arg"),
        pytest.param(b"->\n\n", "stanza without a type", id="no-type"),
        pytest.param(
            b"-> scrypt c2FsdHNhbHRzYWx0c2FsdA 10\n" + age.b64(bytes(32)) + b"\n",
            "scrypt stanza must be the only stanza",
            id="scrypt-mixed",
        ),
    ],
)
def test_malformed_stanzas_are_refused_though_the_identity_fits(
    tmp_path: Path, extra: bytes, message: str | None
) -> None:
    blob, secret = _file_with_stanza(extra)
    if message is None:
        assert age.decrypt_bytes(blob, [secret]) == b"hello"
        assert _age_cli_decrypts(tmp_path, blob, secret)  # the helper makes real age files
        return
    with pytest.raises(age.AgeHeaderError, match=message):
        age.decrypt_bytes(blob, [secret])
    with pytest.raises(age.AgeHeaderError, match=message):
        age.header_length(io.BytesIO(blob))
    if b"scrypt" not in extra:  # age 1.1 enforces "scrypt alone" only for passphrases
        assert not _age_cli_decrypts(tmp_path, blob, secret)  # and age refuses it too


def test_error_kinds() -> None:
    secret, public = age.generate()
    other, _ = age.generate()
    blob = _encrypt(b"x", [public])
    with pytest.raises(age.AgeNoMatchError):
        age.decrypt_bytes(blob, [other])
    mac_at = blob.index(b"--- ") + 5
    altered = blob[:mac_at] + (b"B" if blob[mac_at : mac_at + 1] != b"B" else b"C")
    with pytest.raises(age.AgeHmacError, match="altered"):
        age.decrypt_bytes(altered + blob[mac_at + 1 :], [secret])
    with pytest.raises(age.AgeUnsupportedError, match="ASCII-armored"):
        age.decrypt_bytes(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n", [secret])
    with pytest.raises(age.AgeHeaderError, match="unsupported age version"):
        age.decrypt_bytes(b"age-encryption.org/v2\n", [secret])


@pytest.mark.parametrize("size", [CHUNK // 2, 2 * CHUNK + 100, 3 * CHUNK])
def test_tampered_final_chunk_is_altered_not_truncated(size: int) -> None:
    secret, public = age.generate()
    plain = _data(size)
    blob = bytearray(_encrypt(plain, [public]))
    blob[-5] ^= 0x40  # inside the final chunk's tag
    with pytest.raises(age.AgeAuthenticationError, match="fails authentication") as caught:
        age.decrypt_bytes(bytes(blob), [secret])
    assert not isinstance(caught.value, age.AgeTruncatedError)
    assert "truncated" not in str(caught.value)
    if size % CHUNK == 0:
        # a full-size final chunk cannot be a cut either: altered even when reading leniently
        reader = age.AgeReader(io.BytesIO(bytes(blob)), [secret], allow_truncated=True)
        with pytest.raises(age.AgeAuthenticationError):
            reader.read_all()


def test_missing_last_chunk_is_truncated_and_data_after_it_is_altered() -> None:
    secret, public = age.generate()
    plain = _data(2 * CHUNK)
    blob = _encrypt(plain, [public])
    start = age.header_length(io.BytesIO(blob))
    with pytest.raises(age.AgeTruncatedError, match="without a last chunk"):
        age.decrypt_bytes(blob[: start + CHUNK + 16], [secret])
    reader = age.AgeReader(io.BytesIO(blob + b"more"), [secret])
    chunks = reader.chunks()
    assert next(chunks) == plain[:CHUNK]
    assert next(chunks) == plain[CHUNK:]  # authenticated as the last chunk...
    with pytest.raises(age.AgePayloadError, match="data after the last chunk"):
        next(chunks)  # ...but the file goes on

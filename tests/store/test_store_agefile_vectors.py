"""The C2SP CCTV age test vectors (`$LBM_CORPUS/age-testkit/`, format in its README.md) as a table
test of store/agefile.py's reader.

Each `expect` maps to one of our error kinds; a success must give the plaintext whose SHA-256 the
vector names, and a payload failure must have yielded only the authenticated prefix the vector
names. Vectors for what we do not implement (ASCII armor, scrypt passphrases, ML-KEM hybrid
identities) may be refused as unsupported or unmatched, but are never decrypted.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from lbm_testing import corpus_root

from store import agefile as age

ROOT = corpus_root() / "age-testkit"
MISSING = f"age test vectors not found at {ROOT} (set LBM_CORPUS to ../shared/corpus)"

KINDS: dict[str, type[age.AgeError]] = {
    "header failure": age.AgeHeaderError,
    "HMAC failure": age.AgeHmacError,
    "no match": age.AgeNoMatchError,
    "payload failure": age.AgePayloadError,
}
EXPECTS = {"success", "armor failure", *KINDS}


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    payload: str | None  # SHA-256 hex of the plaintext (for a payload failure: of the prefix)
    identities: tuple[str, ...]
    passphrase: bool
    armored: bool
    data: bytes

    @property
    def feature(self) -> str | None:
        """What we do not implement that this vector needs, if anything."""
        if self.armored or self.expect == "armor failure":
            return "armor"
        if self.passphrase:
            return "scrypt"
        if any(_identity(i) is None for i in self.identities):
            return "hybrid"
        return None

    def keys(self) -> list[age.X25519PrivateKey]:
        return [key for key in map(_identity, self.identities) if key is not None]


def _identity(text: str) -> age.X25519PrivateKey | None:
    try:
        return age.parse_identity(text)
    except age.AgeError:
        return None  # e.g. AGE-SECRET-KEY-PQ-1 (ML-KEM hybrid), which we do not implement


def load(path: Path) -> Vector:
    head, sep, body = path.read_bytes().partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the vector's header"
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return Vector(
        name=path.name,
        expect=fields["expect"][0],
        payload=fields.get("payload", [None])[0],
        identities=tuple(fields.get("identity", [])),
        passphrase="passphrase" in fields,
        armored=fields.get("armored") == ["yes"],
        data=body,
    )


def _names() -> list[str]:
    if not ROOT.is_dir():
        return []
    return sorted(p.name for p in ROOT.iterdir() if p.is_file() and p.name != "README.md")


NAMES = _names()
PARAMS = NAMES or [pytest.param("missing", marks=pytest.mark.skip(reason=MISSING))]


@dataclass
class Outcome:
    plaintext: bytes  # every chunk the reader yielded, even before an error
    error: age.AgeError | None
    truncated: bool


def run(vector: Vector, allow_truncated: bool = False) -> Outcome:
    out: list[bytes] = []
    reader = None
    try:
        reader = age.AgeReader(
            io.BytesIO(vector.data), vector.keys(), allow_truncated=allow_truncated
        )
        for chunk in reader.chunks():
            out.append(chunk)
    except age.AgeError as exc:
        return Outcome(b"".join(out), exc, reader.truncated if reader else False)
    return Outcome(b"".join(out), None, reader.truncated)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_testkit_is_complete() -> None:
    if not ROOT.is_dir():
        pytest.skip(MISSING)
    vectors = [load(ROOT / name) for name in NAMES]
    assert len(vectors) == 143  # age/testdata at the commit the README names
    assert {v.expect for v in vectors} <= EXPECTS
    supported = [v for v in vectors if v.feature is None]
    # most vectors test what we implement, so the table proves something; the split is pinned
    features = Counter(v.feature for v in vectors)
    assert features == {None: 67, "armor": 33, "scrypt": 25, "hybrid": 18}
    assert {v.expect for v in supported} == {"success", *KINDS}


@pytest.mark.parametrize("name", PARAMS)
def test_vector(name: str) -> None:
    vector = load(ROOT / name)
    outcome = run(vector)
    # whatever the vector, nothing is ever decrypted that the vector says must not be
    if outcome.error is None:
        assert vector.expect == "success", f"decrypted a vector expecting {vector.expect}"
        assert vector.payload is not None and _sha(outcome.plaintext) == vector.payload
        assert not outcome.truncated
        return
    if vector.feature is None:
        if vector.expect == "success":
            pytest.fail(f"refused a valid file: {outcome.error!r}")
        assert isinstance(outcome.error, KINDS[vector.expect]), repr(outcome.error)
    else:
        allowed: tuple[type[age.AgeError], ...] = {
            "armor": (age.AgeUnsupportedError, age.AgeHeaderError),
            "scrypt": (age.AgeUnsupportedError,),
            "hybrid": (age.AgeNoMatchError,),  # we hold no identity for the ML-KEM stanza
        }[vector.feature]
        expected = KINDS.get(vector.expect)
        assert isinstance(outcome.error, allowed + ((expected,) if expected else ())), repr(
            outcome.error
        )
    if vector.feature is not None:
        assert not outcome.plaintext  # refused, never (partly) decrypted
    elif vector.payload is not None:
        # only authenticated chunks came out before the failure: exactly the vector's prefix
        assert _sha(outcome.plaintext) == vector.payload


@pytest.mark.parametrize("name", PARAMS)
def test_vector_read_as_possibly_cut_off(name: str) -> None:
    """Reading with allow_truncated (a segment cut off by a crash) changes no verdict except that
    a payload may end early, flagged, with only its authenticated prefix."""
    vector = load(ROOT / name)
    strict, lenient = run(vector), run(vector, allow_truncated=True)
    if strict.error is None:
        assert (lenient.error, lenient.plaintext, lenient.truncated) == (
            None,
            strict.plaintext,
            False,
        )
    elif isinstance(strict.error, age.AgePayloadError):
        assert lenient.error is not None or lenient.truncated
        if vector.payload is not None:
            assert _sha(lenient.plaintext) == vector.payload
    elif "nonce missing" in str(strict.error):  # cut off within the nonce: an empty prefix
        assert (lenient.error, lenient.plaintext, lenient.truncated) == (None, b"", True)
    else:
        assert type(lenient.error) is type(strict.error)
        assert not lenient.plaintext


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        # a header mixing scrypt with other stanzas is refused even though the identity fits
        ("scrypt_and_x25519", age.AgeHeaderError, "scrypt stanza must be the only stanza"),
        ("scrypt_double", age.AgeHeaderError, "scrypt stanza must be the only stanza"),
        ("stanza_empty_argument", age.AgeHeaderError, "empty or invalid stanza argument"),
        ("stanza_no_arguments", age.AgeHeaderError, "stanza without a type"),
        ("scrypt", age.AgeUnsupportedError, "passphrase-encrypted"),
        ("armor_x25519", age.AgeUnsupportedError, "ASCII-armored"),
        ("hmac_bad", age.AgeHmacError, "altered"),
        # a tampered final chunk is an authentication failure, not a truncation
        ("stream_bad_tag", age.AgeAuthenticationError, "fails authentication"),
        ("stream_bad_tag_second_chunk_full", age.AgeAuthenticationError, "fails authentication"),
        ("stream_no_final_full", age.AgeTruncatedError, "truncated"),
        ("stream_trailing_garbage_long", age.AgePayloadError, "data after the last chunk"),
    ],
)
def test_named_refusals(name: str, kind: type[age.AgeError], message: str) -> None:
    if not ROOT.is_dir():
        pytest.skip(MISSING)
    vector = load(ROOT / name)
    outcome = run(vector)
    assert isinstance(outcome.error, kind) and message in str(outcome.error)
    if kind is not age.AgeTruncatedError:
        assert not isinstance(outcome.error, age.AgeTruncatedError)

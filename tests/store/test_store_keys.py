"""The key store: authorisation keys exist only wrapped, unwrap with the real `age` too,
rewrap changes who can open them, and shredding makes them unrecoverable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from store import KeyError_
from store import agefile as age
from store.keys import KeyStore
from store.paths import DataPaths

needs_age = pytest.mark.skipif(
    shutil.which("age") is None, reason="the `age` Debian package is not installed"
)


def _identity(path: Path) -> tuple[str, str]:
    secret, public = age.generate()
    text = age.identity_file_text(secret, ["test investigator"])
    path.write_text(text)
    return text, public


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(DataPaths(tmp_path / "data"))


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


@needs_age
def test_authorisation_key_is_only_stored_wrapped(store: KeyStore, tmp_path: Path) -> None:
    inv_text, inv_pub = _identity(tmp_path / "inv.key")
    public = store.create_authorisation_key("AUTH-1", [inv_pub])
    assert store.auth_pub_path("AUTH-1").read_text().strip() == public
    assert store.authorisation_public("AUTH-1") == public
    assert b"AGE-SECRET-KEY" not in _all_bytes(store.paths.root)
    # the real age CLI opens the wrapped key with the investigator identity
    out = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "inv.key"), str(store.auth_key_path("AUTH-1"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (tmp_path / "auth.key").write_text(out)
    derived = subprocess.run(
        ["age-keygen", "-y", str(tmp_path / "auth.key")], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert derived == public
    assert age.public_of(store.unwrap_authorisation("AUTH-1", inv_text)) == public


def test_create_refuses_duplicates_and_bad_recipients(store: KeyStore, tmp_path: Path) -> None:
    _, inv_pub = _identity(tmp_path / "inv.key")
    with pytest.raises(KeyError_, match="no recipients"):
        store.create_authorisation_key("AUTH-1", [])
    with pytest.raises(KeyError_, match="recipient 'age1bogus'"):
        store.create_authorisation_key("AUTH-1", [inv_pub, "age1bogus"])
    assert not store.auth_key_path("AUTH-1").exists()
    store.create_authorisation_key("AUTH-1", [inv_pub])
    with pytest.raises(KeyError_, match="exists already"):
        store.create_authorisation_key("AUTH-1", [inv_pub])
    with pytest.raises(KeyError_, match="reference"):
        store.create_authorisation_key("../escape", [inv_pub])


def test_wrong_identity_cannot_unwrap(store: KeyStore, tmp_path: Path) -> None:
    _, inv_pub = _identity(tmp_path / "inv.key")
    other_text, _ = _identity(tmp_path / "other.key")
    store.create_authorisation_key("AUTH-1", [inv_pub])
    with pytest.raises(KeyError_, match=r"cannot unwrap.*no identity matched"):
        store.unwrap_authorisation("AUTH-1", other_text)


def test_custodian_and_investigator_both_hold_the_key(store: KeyStore, tmp_path: Path) -> None:
    inv_text, inv_pub = _identity(tmp_path / "inv.key")
    cus_text, cus_pub = _identity(tmp_path / "custodian.key")
    public = store.create_authorisation_key("AUTH-1", [inv_pub, cus_pub])
    assert age.public_of(store.unwrap_authorisation("AUTH-1", inv_text)) == public
    assert age.public_of(store.unwrap_authorisation("AUTH-1", cus_text)) == public


def test_rewrap_moves_the_key_to_exactly_the_new_holders(store: KeyStore, tmp_path: Path) -> None:
    old_text, old_pub = _identity(tmp_path / "old.key")
    new_text, new_pub = _identity(tmp_path / "new.key")
    cus_text, cus_pub = _identity(tmp_path / "cus.key")
    public = store.create_authorisation_key("AUTH-1", [old_pub, cus_pub])
    store.rewrap("AUTH-1", cus_text, [new_pub, cus_pub])
    assert age.public_of(store.unwrap_authorisation("AUTH-1", new_text)) == public
    with pytest.raises(KeyError_, match="cannot unwrap"):
        store.unwrap_authorisation("AUTH-1", old_text)
    # a non-holder cannot rewrap to itself
    with pytest.raises(KeyError_, match="cannot unwrap"):
        store.rewrap("AUTH-1", old_text, [old_pub])


def test_segment_keys_chain_to_the_authorisation_key(store: KeyStore, tmp_path: Path) -> None:
    inv_text, inv_pub = _identity(tmp_path / "inv.key")
    store.create_authorisation_key("AUTH-1", [inv_pub])
    seg_public, fingerprint = store.new_segment_key("AUTH-1", 1)
    assert fingerprint == age.recipient_fingerprint(seg_public)
    assert b"AGE-SECRET-KEY" not in _all_bytes(store.paths.root)
    auth = store.unwrap_authorisation("AUTH-1", inv_text)
    seg_secret = store.unwrap_segment("AUTH-1", 1, auth)
    assert age.public_of(seg_secret) == seg_public
    with pytest.raises(KeyError_, match="cannot unwrap"):
        store.unwrap_segment("AUTH-1", 1, inv_text.splitlines()[-1])
    with pytest.raises(KeyError_, match="exists already"):
        store.new_segment_key("AUTH-1", 1)


def test_destroying_keys_shreds_them(store: KeyStore, tmp_path: Path) -> None:
    inv_text, inv_pub = _identity(tmp_path / "inv.key")
    store.create_authorisation_key("AUTH-1", [inv_pub])
    store.new_segment_key("AUTH-1", 1)
    store.new_segment_key("AUTH-1", 2)
    auth = store.unwrap_authorisation("AUTH-1", inv_text)
    wrapped = store.segment_key_path("AUTH-1", 1).read_bytes()
    assert store.destroy_segment("AUTH-1", 1)
    assert not store.segment_key_path("AUTH-1", 1).exists()
    assert wrapped not in _all_bytes(store.paths.root)
    with pytest.raises(KeyError_, match="missing"):
        store.unwrap_segment("AUTH-1", 1, auth)
    store.unwrap_segment("AUTH-1", 2, auth)  # the other segment is untouched
    assert not store.destroy_segment("AUTH-1", 1)
    assert store.destroy_authorisation("AUTH-1")
    with pytest.raises(KeyError_, match="destroyed"):
        store.unwrap_authorisation("AUTH-1", inv_text)
    with pytest.raises(KeyError_, match="destroyed"):
        store.authorisation_public("AUTH-1")
    with pytest.raises(KeyError_, match="never reused"):
        store.create_authorisation_key("AUTH-1", [inv_pub])


def test_key_operations_are_audited_with_fingerprints_only(tmp_path: Path) -> None:
    from store import signing
    from store.audit import AuditLog
    from store.clock import Clock

    paths = DataPaths(tmp_path / "data")
    audit = AuditLog(paths, signing.create(paths, "gw1"), Clock(), witness=False)
    ks = KeyStore(paths, audit=audit, actor="tester")
    inv_text, inv_pub = _identity(tmp_path / "inv.key")
    public = ks.create_authorisation_key("AUTH-1", [inv_pub])
    ks.new_segment_key("AUTH-1", 1)
    ks.rewrap("AUTH-1", inv_text, [inv_pub])
    ks.destroy_segment("AUTH-1", 1)
    ks.destroy_authorisation("AUTH-1")
    entries = list(audit.entries())
    assert [(e["action"], e["fields"]["key"]) for e in entries] == [
        ("key_create", "authorisation"),
        ("key_rewrap", "authorisation"),
        ("key_destroy", "segment"),
        ("key_destroy", "authorisation"),
    ]
    assert entries[0]["fields"]["fingerprint"] == age.recipient_fingerprint(public)
    assert all(e["refs"] == ["AUTH-1"] and e["actor"] == "tester" for e in entries)
    assert "AGE-SECRET-KEY" not in paths.audit_log.read_text()

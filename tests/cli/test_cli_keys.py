"""`lbm keys`: investigators, development identities, signing key rotation and display, all
through the real CLI in a subprocess, and all audited."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from lbm_testing import grant_argv

from store import KeyError_
from store import agefile as age
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths


def _actions(data_dir: Path) -> list[dict]:
    return list(AuditLog(DataPaths(data_dir), None, Clock()).entries())


def test_investigator_add_list_remove(lbm, tmp_path: Path) -> None:
    _, public = age.generate()
    result = lbm("keys", "investigator", "add", "alice", public, "--principal", "p100", check=True)
    assert "added investigator alice" in result.stdout
    listed = json.loads(lbm("keys", "investigator", "list", "--json", check=True).stdout)
    assert [(i["name"], i["principal"], i["recipient"]) for i in listed] == [
        ("alice", "p100", public)
    ]
    again = lbm("keys", "investigator", "add", "alice", public, "--principal", "p100")
    assert again.returncode == 1 and "exists already" in again.stderr
    lbm("keys", "investigator", "remove", "alice", check=True)
    assert json.loads(lbm("keys", "investigator", "list", "--json", check=True).stdout) == []
    everyone = json.loads(lbm("keys", "investigator", "list", "--all", "--json", check=True).stdout)
    assert everyone[0]["removed_at"] is not None
    gone = lbm("keys", "investigator", "remove", "alice")
    assert gone.returncode == 1 and "no active investigator named alice" in gone.stderr
    entries = [e for e in _actions(lbm.data_dir) if e["action"].startswith("investigator")]
    assert [e["action"] for e in entries] == ["investigator_add", "investigator_remove"]
    assert entries[0]["fields"]["recipient"] == public


@pytest.mark.parametrize("bad", ["age1nope", "ssh-ed25519 AAAA", "AGE-SECRET-KEY-1X"])
def test_investigator_add_refuses_a_bad_key(lbm, bad: str) -> None:
    result = lbm("keys", "investigator", "add", "bob", bad, "--principal", "p2")
    assert result.returncode == 2 and "AGE_PUBLIC_KEY" in result.stderr
    assert json.loads(lbm("keys", "investigator", "list", "--json", check=True).stdout) == []


def test_investigator_add_refuses_bad_names(lbm) -> None:
    _, public = age.generate()
    result = lbm("keys", "investigator", "add", "Bad Name", public, "--principal", "p2")
    assert result.returncode == 1 and "must match" in result.stderr


def test_dev_identity_is_labelled_outside_the_data_dir_and_works_with_age(
    lbm, tmp_path: Path
) -> None:
    out = tmp_path / "dev.key"
    result = lbm("keys", "dev-identity", "--out", str(out), check=True)
    public = result.stdout.strip()
    text = out.read_text()
    assert text.startswith("# DEVELOPMENT IDENTITY - NOT FOR EVIDENCE\n")
    assert out.stat().st_mode & 0o777 == 0o600
    assert age.public_of(age.encode_identity(age.parse_identity_file(text)[0])) == public
    if shutil.which("age-keygen"):
        derived = subprocess.run(
            ["age-keygen", "-y", str(out)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert derived == public
    entry = _actions(lbm.data_dir)[-1]
    assert entry["action"] == "dev_identity" and entry["fields"]["recipient"] == public
    assert "AGE-SECRET-KEY" not in json.dumps(entry)
    again = lbm("keys", "dev-identity", "--out", str(out))
    assert again.returncode == 2 and "exists already" in again.stderr


def test_dev_identity_refuses_a_path_inside_the_data_dir(lbm, tmp_path: Path) -> None:
    inside = lbm.data_dir / "keys" / "dev.key"
    result = lbm("keys", "dev-identity", "--out", str(inside))
    assert result.returncode == 2 and "inside the data directory" in result.stderr
    assert not inside.exists()
    link = tmp_path / "sneaky"
    link.symlink_to(lbm.data_dir)
    result = lbm("keys", "dev-identity", "--out", str(link / "dev.key"))
    assert result.returncode == 2 and not (lbm.data_dir / "dev.key").exists()


def test_rotate_signing_keeps_the_old_public_key(lbm) -> None:
    before = json.loads(lbm("keys", "show", "--json", check=True).stdout)
    assert before["retired_fingerprints"] == []
    assert before["allowed_signers"].startswith("gw1 ssh-ed25519 ")
    rotated = json.loads(lbm("keys", "rotate-signing", "--json", check=True).stdout)
    assert rotated["old_fingerprint"] == before["fingerprint"]
    after = json.loads(lbm("keys", "show", "--json", check=True).stdout)
    assert after["fingerprint"] == rotated["new_fingerprint"] != before["fingerprint"]
    assert after["retired_fingerprints"] == [before["fingerprint"]]
    entry = _actions(lbm.data_dir)[-1]
    assert entry["action"] == "key_rotate" and entry["key"] == before["fingerprint"]  # old key
    assert entry["fields"]["new_fingerprint"] == after["fingerprint"]  # vouches for the new one
    # entries signed before and after the rotation all verify
    assert lbm("audit", "verify").returncode == 0
    text = lbm("keys", "show", check=True).stdout
    assert after["fingerprint"] in text and before["fingerprint"] in text


def test_rewrap_follows_assignment_and_needs_a_holder(lbm, tmp_path: Path) -> None:
    keys = {}
    for name, principal in (("alice", "p100"), ("bob", "p101")):
        out = tmp_path / f"{name}.key"
        keys[name] = out
        public = lbm("keys", "dev-identity", "--out", str(out), check=True).stdout.strip()
        lbm("keys", "investigator", "add", name, public, "--principal", principal, check=True)
    officer = ("p900", "Jo Bloggs", "head_of_professional_standards", "superintendent")
    argv = grant_argv("CASE-1", channel="email", investigator="alice", officer=officer)
    lbm(*argv, check=True)
    lbm("auth", "assign", "CASE-1", "bob", check=True)
    from store.keys import KeyStore

    store = KeyStore(DataPaths(lbm.data_dir))
    with pytest.raises(KeyError_, match="cannot unwrap"):
        store.unwrap_authorisation("CASE-1", keys["bob"].read_text())
    refused = lbm("keys", "rewrap", "CASE-1", "--identity", str(keys["bob"]))
    assert refused.returncode == 1 and "cannot unwrap" in refused.stderr
    done = lbm(
        "keys", "rewrap", "CASE-1", "--identity", "-", input=keys["alice"].read_text(), check=True
    )
    assert "alice, bob" in done.stdout
    public = store.authorisation_public("CASE-1")
    assert age.public_of(store.unwrap_authorisation("CASE-1", keys["bob"].read_text())) == public
    assert "rewrap_due" not in lbm("auth", "list", check=True).stdout
    lbm("keys", "investigator", "remove", "alice", check=True)
    lbm("keys", "rewrap", "CASE-1", "--identity", str(keys["bob"]), check=True)
    with pytest.raises(KeyError_, match="cannot unwrap"):
        store.unwrap_authorisation("CASE-1", keys["alice"].read_text())
    assert [e["action"] for e in _actions(lbm.data_dir)].count("key_rewrap") == 2

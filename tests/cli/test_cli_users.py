"""`lbm users add | remove | list` through the real CLI: passwords from stdin or a prompt (never
the command line), a 0600 file the verifier accepts, flags, audited changes without hashes,
clear errors for bad names, duplicates and missing users."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import Lbm

from appliance.policy.users import UsersFile

FAST = {"LBM_BCRYPT_ROUNDS": "4"}  # tests only: honoured because the test config has fake_clock


def audit_entries(lbm: Lbm, action: str) -> list[dict[str, Any]]:
    lines = (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("action") == action]


def test_add_list_remove_round_trip(lbm: Lbm) -> None:
    path = lbm.data_dir / "users"
    added = lbm("users", "add", "jsmith", "--password-stdin", input="s3cret-Pw\n", env=FAST)
    assert added.returncode == 0, added.stderr
    added = lbm("users", "add", "amy", "--smtp", "--password-stdin", input="amy-pw\n", env=FAST)
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = UsersFile.load(path)
    assert users.verify("jsmith", "s3cret-Pw") and not users.verify("jsmith", "s3cret-Pw\n")
    assert users.can_relay_smtp("amy") and not users.can_relay_smtp("jsmith")
    assert "$2b$04$" in path.read_text()

    listed = lbm("users", "list", check=True)
    assert listed.stdout.split("\n")[:2] == ["amy\tsmtp", "jsmith\t-"]
    assert "$2b$" not in listed.stdout
    as_json = json.loads(lbm("users", "list", "--json", check=True).stdout)
    assert as_json["users"] == [
        {"user": "amy", "flags": ["smtp"]},
        {"user": "jsmith", "flags": []},
    ]

    removed = lbm("users", "remove", "amy", check=True)
    assert "removed" in removed.stdout
    assert UsersFile.load(path).users() == ["jsmith"]

    changes = audit_entries(lbm, "users_change")
    assert [(e["fields"]["user"], e["fields"]["change"]) for e in changes] == [
        ("jsmith", "add"),
        ("amy", "add"),
        ("amy", "remove"),
    ]
    assert changes[1]["fields"]["flags"] == ["smtp"]
    audit_text = (lbm.data_dir / "audit" / "audit.jsonl").read_text()
    assert "$2b$" not in audit_text and "s3cret-Pw" not in audit_text and "amy-pw" not in audit_text


def test_prompted_password_must_match(lbm: Lbm) -> None:
    ok = lbm("users", "add", "bob", input="pw-one\npw-one\n", env=FAST)
    assert ok.returncode == 0, ok.stderr
    assert "pw-one" not in ok.stdout + ok.stderr
    assert UsersFile.load(lbm.data_dir / "users").verify("bob", "pw-one")
    mismatch = lbm("users", "add", "carl", input="aaa\nbbb\n", env=FAST)
    assert mismatch.returncode != 0
    assert "carl" not in UsersFile.load(lbm.data_dir / "users")


def test_duplicate_needs_replace(lbm: Lbm) -> None:
    lbm("users", "add", "bob", "--password-stdin", input="old-pw\n", env=FAST, check=True)
    again = lbm("users", "add", "bob", "--password-stdin", input="new-pw\n", env=FAST)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert UsersFile.load(lbm.data_dir / "users").verify("bob", "old-pw")
    lbm("users", "add", "bob", "--smtp", "--replace", "--password-stdin", input="new-pw\n",
        env=FAST, check=True)  # fmt: skip
    users = UsersFile.load(lbm.data_dir / "users")
    assert users.verify("bob", "new-pw") and not users.verify("bob", "old-pw")
    assert users.can_relay_smtp("bob")
    assert [e["fields"]["change"] for e in audit_entries(lbm, "users_change")] == [
        "add",
        "replace",
    ]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(("Bob",), "pw\n", "invalid user name", id="upper-case-name"),
        pytest.param(("a" * 65,), "pw\n", "invalid user name", id="long-name"),
        pytest.param(("bob",), "\n", "empty password", id="empty-password"),
        pytest.param(("bob",), "x" * 73 + "\n", "72 bytes", id="long-password"),
    ],
)
def test_bad_input_is_refused_clearly(
    lbm: Lbm, args: tuple[str, ...], stdin: str, message: str
) -> None:
    result = lbm("users", "add", *args, "--password-stdin", input=stdin, env=FAST)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (lbm.data_dir / "users").exists()
    assert audit_entries(lbm, "users_change") == []


def test_remove_unknown_and_broken_file(lbm: Lbm) -> None:
    missing = lbm("users", "remove", "ghost")
    assert missing.returncode == 1 and "no user 'ghost'" in missing.stderr
    lbm("users", "add", "bob", "--password-stdin", input="pw\n", env=FAST, check=True)
    missing = lbm("users", "remove", "ghost")
    assert missing.returncode == 1 and "no user 'ghost'" in missing.stderr
    path = lbm.data_dir / "users"
    path.write_text(path.read_text() + "bob2:plaintext-password\n")
    broken = lbm("users", "list")
    assert broken.returncode == 1
    assert f"{path}:3:" in broken.stderr and "not a bcrypt hash" in broken.stderr
    assert "plaintext-password" not in broken.stderr
    # a broken file is not overwritten by a change either
    refused = lbm("users", "add", "carol", "--password-stdin", input="pw\n", env=FAST)
    assert refused.returncode == 1 and "bob2:plaintext-password" in path.read_text()


def test_bcrypt_rounds_env_ignored_without_fake_clock(lbm: Lbm) -> None:
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = true", "fake_clock = false"))
    lbm("users", "add", "bob", "--password-stdin", input="pw\n", env=FAST, check=True)
    assert "$2b$12$" in (lbm.data_dir / "users").read_text()


def test_configured_users_file_location(lbm: Lbm, tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc" / "lbm-users"
    elsewhere.parent.mkdir()
    config = lbm.data_dir / "lbm.toml"
    text = config.read_text()
    assert 'users_file = "users"' in text
    config.write_text(text.replace('users_file = "users"', f'users_file = "{elsewhere}"'))
    lbm("users", "add", "bob", "--password-stdin", input="pw\n", env=FAST, check=True)
    assert UsersFile.load(elsewhere).users() == ["bob"]
    assert not (lbm.data_dir / "users").exists()

"""The users file (appliance/policy/users.py): parsing with file:line errors, bcrypt verification
(unknown users cost the same), flags, the verified-credentials cache, atomic 0600 writes under a
lock, and `UsersSource` reloading on change while keeping the last good file on a bad reload."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.policy import users as users_mod
from appliance.policy.users import (
    UserEntry,
    UsersFile,
    UsersFileError,
    UsersSource,
    hash_password,
    update_users_file,
)

ROUNDS = 4  # tests only: cost 4 keeps them fast; the CLI default is 12


def _hash(password: str) -> str:
    return hash_password(password, rounds=ROUNDS)


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"alice": _hash("alice-pw"), "bob": _hash("bob-pw")}


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_load_verify_flags(tmp_path: Path, hashes: dict[str, str]) -> None:
    path = tmp_path / "users"
    _write(
        path,
        f"# a comment\n\nalice:{hashes['alice']}\r\nbob:{hashes['bob']}:smtp\n",
    )
    users = UsersFile.load(path)
    assert users.users() == ["alice", "bob"]
    assert users.verify("alice", "alice-pw")
    assert users.verify("bob", b"bob-pw")
    assert not users.verify("alice", "bob-pw")
    assert not users.verify("alice", "")
    assert not users.verify("carol", "alice-pw")
    assert users.flags("bob") == frozenset({"smtp"})
    assert users.flags("alice") == frozenset()
    assert users.flags("carol") == frozenset()
    assert users.can_relay_smtp("bob")
    assert not users.can_relay_smtp("alice")
    assert not users.can_relay_smtp("carol")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("alice", "expected user:bcrypt-hash", id="no-hash"),
        pytest.param("Alice:{h}", "invalid user name", id="upper-case"),
        pytest.param("-x:{h}", "invalid user name", id="leading-dash"),
        pytest.param("a" * 65 + ":{h}", "invalid user name", id="too-long"),
        pytest.param("alice:{{SHA}}abc=", "not a bcrypt hash", id="sha1-htpasswd"),
        pytest.param("alice:$apr1$xyz$abc", "not a bcrypt hash", id="md5-htpasswd"),
        pytest.param("alice:{h}:smpt", "unknown flag 'smpt'", id="flag-typo"),
        pytest.param("alice:{h}:smtp:x", "expected user:bcrypt-hash", id="four-fields"),
    ],
)
def test_bad_line_names_file_and_line(
    tmp_path: Path, hashes: dict[str, str], line: str, message: str
) -> None:
    path = tmp_path / "users"
    _write(path, f"bob:{hashes['bob']}\n# ok\n" + line.format(h=hashes["alice"]) + "\n")
    with pytest.raises(UsersFileError) as info:
        UsersFile.load(path)
    text = str(info.value)
    assert f"{path}:3:" in text
    assert message in text
    assert hashes["alice"] not in text  # the hash is never echoed


def test_duplicate_user_is_an_error(tmp_path: Path, hashes: dict[str, str]) -> None:
    path = tmp_path / "users"
    _write(path, f"alice:{hashes['alice']}\nalice:{hashes['bob']}\n")
    with pytest.raises(UsersFileError, match=r":2: duplicate user 'alice'"):
        UsersFile.load(path)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read users file"):
        UsersFile.load(tmp_path / "absent")
    path = tmp_path / "users"
    path.write_bytes(b"# ok\n\xff\xfe:x\n")
    with pytest.raises(UsersFileError, match=r"users:2: not UTF-8"):
        UsersFile.load(path)


def test_password_limits_are_refused_not_truncated(hashes: dict[str, str]) -> None:
    with pytest.raises(UsersFileError, match="72 bytes"):
        hash_password("x" * 73, rounds=ROUNDS)
    with pytest.raises(UsersFileError, match="NUL"):
        hash_password("a\0b", rounds=ROUNDS)
    with pytest.raises(UsersFileError, match="empty"):
        hash_password("", rounds=ROUNDS)
    # bcrypt alone would accept any password sharing the first 72 bytes: verify refuses it
    long_pw = "y" * 72
    users = UsersFile({"carol": UserEntry("carol", _hash(long_pw))})
    assert users.verify("carol", long_pw)
    assert not users.verify("carol", long_pw + "extra")
    assert bcrypt.checkpw((long_pw + "extra").encode(), users.entry("carol").password_hash.encode())  # type: ignore[union-attr]


def test_unknown_user_costs_a_bcrypt_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing must not reveal which users exist: every miss runs bcrypt at the file's cost."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed[:7])
        return real(password, hashed)

    users = UsersFile({"alice": UserEntry("alice", _hash("alice-pw"))})
    monkeypatch.setattr(users_mod.bcrypt, "checkpw", counting)
    assert not users.verify("nobody", "alice-pw")
    assert not users.verify("Bad Name!", "x" * 200)
    assert not users.verify("alice", "x" * 200)
    assert not users.verify("alice", "wrong")
    assert calls == [b"$2b$04$"] * 4  # the dummy hash uses the file's own cost


def test_verified_cache_skips_bcrypt_and_is_per_file(monkeypatch: pytest.MonkeyPatch) -> None:
    users = UsersFile({"alice": UserEntry("alice", _hash("alice-pw"))})
    assert users.verify("alice", "alice-pw")
    calls: list[int] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr(users_mod.bcrypt, "checkpw", counting)
    assert users.verified_recently("alice", "alice-pw")
    assert not users.verified_recently("alice", "other")
    assert users.verify("alice", "alice-pw")
    assert calls == []  # cached
    assert not users.verify("alice", "alice-pw2")  # a wrong password is never a cache hit
    assert len(calls) == 1
    # the cache holds keyed digests, never the password
    cache_keys = list(users._cache._entries)
    assert all(b"alice-pw" not in key for key in cache_keys)
    # a reloaded file (a new UsersFile) has an empty cache
    reloaded = UsersFile.parse(users.render())
    assert reloaded.verify("alice", "alice-pw")
    assert len(calls) == 2


def test_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    users = UsersFile({"alice": UserEntry("alice", _hash("alice-pw"))})
    users._cache.ttl = 0.05
    assert users.verify("alice", "alice-pw")
    time.sleep(0.1)
    calls: list[int] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(users_mod.bcrypt, "checkpw", lambda p, h: calls.append(1) or real(p, h))
    assert users.verify("alice", "alice-pw")
    assert calls == [1]


def test_update_writes_0600_atomically_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "users"
    os.umask(0o022)
    update_users_file(
        path, lambda u: u.with_user(UserEntry("bob", _hash("b"), frozenset({"smtp"})))
    )
    update_users_file(path, lambda u: u.with_user(UserEntry("alice", _hash("a"))))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = UsersFile.load(path)
    assert loaded.users() == ["alice", "bob"]
    assert loaded.can_relay_smtp("bob") and loaded.verify("alice", "a")
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines[1].endswith(":smtp") and lines[1].startswith("bob:$2b$04$")
    update_users_file(path, lambda u: u.without_user("bob"))
    assert UsersFile.load(path).users() == ["alice"]
    with pytest.raises(UsersFileError, match="no user 'bob'"):
        update_users_file(path, lambda u: u.without_user("bob"))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users"
    pre = {f"u{i}": _hash(f"pw{i}") for i in range(12)}

    def add(name: str) -> None:
        update_users_file(path, lambda u: u.with_user(UserEntry(name, pre[name])))

    threads = [threading.Thread(target=add, args=(name,)) for name in pre]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert UsersFile.load(path).users() == sorted(pre)


def test_source_reloads_keeps_last_good_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "users"
    errors: list[str] = []
    source = UsersSource(path, interval=0.0, on_error=errors.append)
    assert source.current() is None  # no file: no users
    update_users_file(path, lambda u: u.with_user(UserEntry("alice", _hash("a"))))
    first = source.current()
    assert first is not None and first.users() == ["alice"]
    assert source.current() is first  # unchanged: no reload
    update_users_file(path, lambda u: u.with_user(UserEntry("bob", _hash("b"))))
    second = source.current()
    assert second is not None and second.users() == ["alice", "bob"]
    # a bad edit: the last good file stays in force, the error is reported once
    good = path.read_text()
    path.write_text(good + "broken line\n")
    assert source.current() is second
    assert source.current() is second
    assert len(errors) == 1 and f"{path}:" in errors[0] and source.last_error == errors[0]
    # fixed again
    path.write_text(good.replace("bob:", "carol:"))
    third = source.current()
    assert third is not None and third.users() == ["alice", "carol"]
    assert source.last_error is None
    # deleted: everyone is revoked
    path.unlink()
    assert source.current() is None


def test_source_checks_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "users"
    update_users_file(path, lambda u: u.with_user(UserEntry("alice", _hash("a"))))
    source = UsersSource(path, interval=30.0)
    first = source.current()
    update_users_file(path, lambda u: u.with_user(UserEntry("bob", _hash("b"))))
    assert source.current() is first  # within the interval: the cheap path
    source.interval = 0.0
    refreshed = source.current()
    assert refreshed is not None and "bob" in refreshed.users()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_parse_arbitrary_bytes_raises_only_users_file_error(data: bytes) -> None:
    try:
        parsed = UsersFile.parse(data, Path("/x/users"))
    except UsersFileError as exc:
        assert str(exc).startswith("/x/users:")
    else:
        assert UsersFile.parse(parsed.render()).users() == parsed.users()


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
            st.sampled_from([frozenset(), frozenset({"smtp"})]),
        ),
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_render_parse_round_trip(items: list[tuple[str, frozenset[str]]]) -> None:
    fixed_hash = "$2b$04$" + "a" * 53
    users = UsersFile({n: UserEntry(n, fixed_hash, f) for n, f in items})
    again = UsersFile.parse(users.render())
    assert again.users() == sorted(n for n, _ in items)
    assert all(again.flags(n) == f for n, f in items)

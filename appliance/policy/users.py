"""The users file: who may use the proxy (explicit mode with authentication) and relay mail.

One file, `[identity] users_file`, shared by the web proxy and the SMTP relay (DECISIONS.md,
Wave 2), so neither imports the other. Format: Apache htpasswd with bcrypt hashes, one user a
line, plus an optional third field of comma-separated flags::

    # comments and blank lines are ignored
    p12345:$2b$12$abcdefghijklmnopqrstuu0123456789abcdefghijklmnopqrstu
    p67890:$2b$12$abcdefghijklmnopqrstuu0123456789abcdefghijklmnopqrstu:smtp

- user: an id, `[a-z0-9][a-z0-9._-]*`, at most 64 characters; each user once. The name is the
  proxy username / SMTP AUTH login; it resolves to a principal through the identity map, never
  by assumption.
- hash: bcrypt (`$2a$`, `$2b$` or `$2y$`, cost 04-31). Passwords are at most 72 bytes (bcrypt
  ignores the rest, so longer ones are refused rather than silently truncated).
- flags (optional): `smtp` lets the user relay mail with SMTP AUTH. Unknown flags are an error
  (a typo must not silently withhold or grant a right).

A bad line raises `UsersFileError` naming the file and the line number, never the line's text.
`lbm users add|remove|list` writes the file (0600, atomically, under a lock) with
`update_users_file`. `UsersSource` keeps a loaded file current for a daemon: it reloads when the
file's mtime, size or inode changes and keeps the last good file on a bad reload.

Verification (`UsersFile.verify`) costs one bcrypt check (about 250 ms at cost 12) whether or not
the user exists, so timing does not reveal user names. Plain-HTTP proxy requests carry the
credentials on every request, so a verified pair is remembered for a minute under an
HMAC-SHA-256 of user, NUL and password (keyed with a per-process random key, so the cache holds
nothing an attacker could brute-force offline); the cache belongs to one loaded file, so a reload
clears it (`appliance.policy.password_check`). Passwords are never logged, stored in
plaintext or put in an exception message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from appliance.policy import PolicyError
from appliance.policy.password_check import VerifiedCache, cache_key, dummy_hash, rounds_of
from store.fsutil import atomic_write
from store.safefile import UnsafeFileError, read_regular

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
BCRYPT_HASH_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
FLAG_SMTP = "smtp"
KNOWN_FLAGS = frozenset({FLAG_SMTP})
DEFAULT_ROUNDS = 12
MAX_PASSWORD_BYTES = 72  # bcrypt ignores bytes past 72
MAX_FILE_BYTES = 64 * 1024 * 1024
RELOAD_INTERVAL = 0.5  # seconds between stat checks of the users file


class UsersFileError(PolicyError):
    """The users file is unreadable or malformed, or a change to it is refused."""


@dataclass(frozen=True)
class UserEntry:
    name: str
    password_hash: str
    flags: frozenset[str] = frozenset()

    def render(self) -> str:
        line = f"{self.name}:{self.password_hash}"
        if self.flags:
            line += ":" + ",".join(sorted(self.flags))
        return line


def check_username(name: str) -> str:
    """Return `name` if it is a valid user id; raise `UsersFileError` otherwise."""
    if not USERNAME_RE.fullmatch(name):
        raise UsersFileError(
            f"invalid user name {name[:80]!r}: use [a-z0-9][a-z0-9._-]*, at most 64 characters"
        )
    return name


def check_flags(flags: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = sorted(set(flags) - KNOWN_FLAGS)
    if unknown:
        known = ", ".join(sorted(KNOWN_FLAGS))
        raise UsersFileError(f"unknown flag {unknown[0][:40]!r} (known: {known})")
    return frozenset(flags)


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def hash_password(password: str | bytes, rounds: int = DEFAULT_ROUNDS) -> str:
    """bcrypt-hash a new password. Refuses empty, NUL-containing and over-72-byte passwords."""
    raw = _password_bytes(password)
    if not raw:
        raise UsersFileError("empty password refused")
    if b"\0" in raw:
        raise UsersFileError("password contains a NUL byte")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise UsersFileError(f"password longer than {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    if not 4 <= rounds <= 31:
        raise UsersFileError(f"bcrypt rounds {rounds} out of range 4-31")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode("ascii")


class UsersFile:
    """A parsed users file (immutable); `verify` checks a password, with a short cache."""

    def __init__(self, entries: Mapping[str, UserEntry], path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, UserEntry] = dict(entries)
        self._cache = VerifiedCache()
        rounds = [rounds_of(e.password_hash) for e in self._entries.values()]
        self._dummy_rounds = max(rounds) if rounds else DEFAULT_ROUNDS

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> UsersFile:
        """Read and parse `path`: a regular file (a FIFO or device is refused, not waited on),
        at most MAX_FILE_BYTES, not writable by group or others (anyone who can write it can
        add a user, as ssh refuses such an authorized_keys)."""
        path = Path(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UsersFileError(f"{path}: cannot read users file: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UsersFileError(
                f"{path}: users file is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod 600)"
            )
        try:
            data = read_regular(path, "users file", MAX_FILE_BYTES)
        except UnsafeFileError as exc:
            raise UsersFileError(str(exc)) from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, path: Path | None = None) -> UsersFile:
        where = str(path) if path is not None else "<users>"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = data[: exc.start].count(b"\n") + 1
            raise UsersFileError(f"{where}:{bad_line}: not UTF-8") from None
        entries: dict[str, UserEntry] = {}
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r").strip()
            if not line or line.startswith("#"):
                continue
            entry = _parse_line(line, where, number)
            if entry.name in entries:
                raise UsersFileError(f"{where}:{number}: duplicate user {entry.name!r}")
            entries[entry.name] = entry
        return cls(entries, path)

    def users(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, username: str) -> UserEntry | None:
        return self._entries.get(username)

    def flags(self, username: str) -> frozenset[str]:
        entry = self._entries.get(username)
        return entry.flags if entry is not None else frozenset()

    def can_relay_smtp(self, username: str) -> bool:
        return FLAG_SMTP in self.flags(username)

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # -- verifying ---------------------------------------------------------------------------

    def verified_recently(self, username: str, password: str | bytes) -> bool:
        """True if this pair passed `verify` within the cache TTL: no bcrypt, so an event loop
        may call it before handing a miss to `verify` in a worker thread."""
        return self._cache.hit(cache_key(username, _password_bytes(password)))

    def verify(self, username: str, password: str | bytes) -> bool:
        """True if `password` is `username`'s. Blocks for one bcrypt check (unless cached):
        call it from a worker thread in an event loop. An unknown user, an over-long password
        or a malformed name costs the same check, so timing reveals nothing."""
        raw = _password_bytes(password)
        key = cache_key(username, raw)
        if self._cache.hit(key):
            return True
        entry = self._entries.get(username)
        usable = entry is not None and 0 < len(raw) <= MAX_PASSWORD_BYTES and b"\0" not in raw
        if entry is None or not usable:
            bcrypt.checkpw(raw[:MAX_PASSWORD_BYTES] or b"-", dummy_hash(self._dummy_rounds))
            return False
        try:
            ok = bcrypt.checkpw(raw, entry.password_hash.encode("ascii"))
        except ValueError:  # a hash the parser let through but bcrypt rejects: never a match
            ok = False
        if ok:
            self._cache.add(key)
        return ok

    # -- writing (lbm users) -----------------------------------------------------------------

    def with_user(self, entry: UserEntry) -> UsersFile:
        entries = dict(self._entries)
        entries[check_username(entry.name)] = entry
        return UsersFile(entries, self.path)

    def without_user(self, username: str) -> UsersFile:
        if username not in self._entries:
            raise UsersFileError(f"no user {username!r}")
        entries = dict(self._entries)
        del entries[username]
        return UsersFile(entries, self.path)

    def render(self) -> bytes:
        header = "# lbm users file: user:bcrypt-hash[:flags] (managed by `lbm users`)\n"
        body = "".join(self._entries[name].render() + "\n" for name in sorted(self._entries))
        return (header + body).encode("utf-8")


def _parse_line(line: str, where: str, number: int) -> UserEntry:
    parts = line.split(":")
    if len(parts) not in (2, 3):
        raise UsersFileError(f"{where}:{number}: expected user:bcrypt-hash[:flags]")
    name, password_hash = parts[0], parts[1]
    if not USERNAME_RE.fullmatch(name):
        raise UsersFileError(
            f"{where}:{number}: invalid user name (use [a-z0-9][a-z0-9._-]*, at most 64 characters)"
        )
    if not BCRYPT_HASH_RE.fullmatch(password_hash):
        raise UsersFileError(f"{where}:{number}: user {name!r}: not a bcrypt hash ($2b$NN$...)")
    flags: frozenset[str] = frozenset()
    if len(parts) == 3:
        items = [item.strip() for item in parts[2].split(",") if item.strip()]
        try:
            flags = check_flags(tuple(items))
        except UsersFileError as exc:
            raise UsersFileError(f"{where}:{number}: user {name!r}: {exc}") from None
    return UserEntry(name, password_hash, flags)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_users_file(path: Path, change: Callable[[UsersFile], UsersFile]) -> UsersFile:
    """Read `path` (absent: empty), apply `change`, write the result 0600 atomically, under an
    exclusive lock so two concurrent `lbm users` commands cannot lose each other's change."""
    path = Path(path)
    with _locked(path):
        current = UsersFile.load(path) if path.exists() else UsersFile({}, path)
        updated = change(current)
        atomic_write(path, updated.render())
        return updated


def users_file_path(configured: str, data_dir: Path) -> Path:
    """Where `[identity] users_file` points: relative paths are under the data directory."""
    path = Path(configured or "users").expanduser()
    return path if path.is_absolute() else Path(data_dir) / path


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class UsersSource:
    """The current users file for a daemon, reloaded when it changes (checked at most every
    `interval` seconds). A bad reload keeps the last good file and reports the error through
    `on_error` once per bad version; a missing file means no users (`current()` is None), so
    deleting the file revokes everyone. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = RELOAD_INTERVAL,
        on_error: Callable[[str], None] | None = None,
        on_reload: Callable[[UsersFile | None], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.on_error = on_error
        self.on_reload = on_reload
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._file: UsersFile | None = None
        self._key: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._loaded_once = False

    def current(self) -> UsersFile | None:
        now = time.monotonic()
        with self._lock:
            if self._loaded_once and now - self._checked < self.interval:
                return self._file
            self._checked = now
            key = _stat_key(self.path)
            if self._loaded_once and key == self._key:
                return self._file
            self._reload(key)
            return self._file

    def _reload(self, key: tuple[int, int, int] | None) -> None:
        first = not self._loaded_once
        self._loaded_once = True
        if key is None:
            self._key = None
            changed = self._file is not None or first
            self._file = None
            self.last_error = None
            if changed and self.on_reload is not None:
                self.on_reload(None)
            return
        try:
            loaded = UsersFile.load(self.path)
        except UsersFileError as exc:
            self._key = key  # report this version once; a further change is tried again
            self.last_error = str(exc)
            if self.on_error is not None:
                self.on_error(self.last_error)
            return
        self._key = key
        self._file = loaded
        self.last_error = None
        if self.on_reload is not None:
            self.on_reload(loaded)

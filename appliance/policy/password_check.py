"""What checking a users-file password costs (`appliance.policy.users`): one bcrypt check
whether or not the user exists (`dummy_hash` for unknown users, at the file's own cost), and
a short, bounded cache of verified pairs (`VerifiedCache`) under an HMAC-SHA-256 of user, NUL
and password, keyed with a per-process random key, so the cache holds nothing an attacker
could brute-force offline and never a password."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

import bcrypt

CACHE_TTL = 60.0  # seconds a verified (user, password) pair is trusted without bcrypt
CACHE_MAX = 4096  # entries; the oldest go first

_KEY = secrets.token_bytes(32)


_dummy_hashes: dict[int, bytes] = {}
_dummy_lock = threading.Lock()


def dummy_hash(rounds: int) -> bytes:
    """A hash of a random password at `rounds`, for checks against unknown users."""
    with _dummy_lock:
        found = _dummy_hashes.get(rounds)
        if found is None:
            found = bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds))
            _dummy_hashes[rounds] = found
        return found


def rounds_of(password_hash: str) -> int:
    return int(password_hash[4:6])


def cache_key(username: str, password: bytes) -> bytes:
    return hmac.new(_KEY, username.encode() + b"\0" + password, hashlib.sha256).digest()


class VerifiedCache:
    """Verified credentials for a short time, bounded; keys are keyed hashes, never passwords."""

    def __init__(self, ttl: float = CACHE_TTL, max_entries: int = CACHE_MAX) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def hit(self, key: bytes) -> bool:
        now = time.monotonic()
        with self._lock:
            expires = self._entries.get(key)
            if expires is None:
                return False
            if expires <= now:
                del self._entries[key]
                return False
            return True

    def add(self, key: bytes) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v > now}
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = time.monotonic() + self.ttl

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

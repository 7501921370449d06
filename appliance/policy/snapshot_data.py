"""Immutable policy snapshots: what `decide` reads.

A `Snapshot` holds everything `decide` needs: every authorisation with its history, the identity
map and the do-not-decrypt globs. It never changes; a reload makes a new one and swaps a single
reference, so a daemon's `source.current()` is an attribute read and every decision within one
request sees one consistent policy.

`appliance.policy.snapshot` re-exports these with `SnapshotSource` (`snapshot_source`), which
keeps a daemon's snapshot fresh and fails closed when it cannot.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

from appliance.policy import identity
from appliance.policy.model import Authorisation, Channel
from appliance.policy.registry_store import load_all


class IdentityResolver(Protocol):
    """What the snapshot needs of the identity map (appliance.policy.identity.IdentityMap)."""

    def resolve(self, **identifiers: Any) -> str | None: ...


class NoIdentity:
    """An identity map that resolves nobody (no feed loaded, or no identity module)."""

    def resolve(self, **identifiers: Any) -> str | None:
        return None


def load_identity_map(conn: sqlite3.Connection) -> IdentityResolver:
    """The registry's identity map, read afresh."""
    return cast(IdentityResolver, identity.load_identity(conn))


class CachedIdentityLoader:
    """Reuses the identity map while the identity load is unchanged: a registry change (a grant,
    a cancellation) then reloads only the authorisations, not a map of many leases."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._map: IdentityResolver | None = None

    def __call__(self, conn: sqlite3.Connection) -> IdentityResolver:
        load = identity.current_load(conn)
        key = None if load is None else (load["generation"], load["sha256"], load["source"])
        if self._map is None or key != self._key:
            self._map = load_identity_map(conn)
            self._key = key
        return self._map


def normalise_globs(globs: Iterable[str]) -> tuple[str, ...]:
    return tuple(g.strip().lower().rstrip(".") for g in globs if g and g.strip())


def glob_match(server_name: str, globs: Sequence[str]) -> bool:
    """Case-insensitive glob match; `*.example.org` also matches `example.org` itself (erring
    toward not decrypting)."""
    name = server_name.strip().lower().rstrip(".")
    if not name:
        return False
    for pattern in globs:
        if fnmatch.fnmatchcase(name, pattern):
            return True
        if pattern.startswith("*.") and name == pattern[2:]:
            return True
    return False


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the policy (immutable; `Snapshot.build(...)` takes iterables)."""

    authorisations: tuple[Authorisation, ...] = ()
    identity: IdentityResolver = field(default_factory=NoIdentity)
    do_not_decrypt: tuple[str, ...] = ()
    version: int = 0
    stale: bool = False  # the registry could not be read: no authorisation is trusted
    _by_subject: dict[str, tuple[Authorisation, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_subject: dict[str, list[Authorisation]] = {}
        for auth in self.authorisations:
            by_subject.setdefault(auth.subject, []).append(auth)
        object.__setattr__(self, "_by_subject", {k: tuple(v) for k, v in by_subject.items()})
        object.__setattr__(self, "do_not_decrypt", normalise_globs(self.do_not_decrypt))

    @classmethod
    def build(
        cls,
        authorisations: Iterable[Authorisation] = (),
        identity: IdentityResolver | None = None,
        do_not_decrypt: Iterable[str] = (),
        version: int = 0,
        stale: bool = False,
    ) -> Snapshot:
        return cls(
            () if stale else tuple(authorisations),
            identity if identity is not None else NoIdentity(),
            tuple(do_not_decrypt),
            version,
            stale,
        )

    def stale_copy(self, version: int) -> Snapshot:
        """This snapshot with every authorisation withdrawn (identity and globs kept)."""
        return Snapshot((), self.identity, self.do_not_decrypt, version, stale=True)

    def for_subject(self, principal: str) -> tuple[Authorisation, ...]:
        return self._by_subject.get(principal, ())

    def subjects_at(self, at: datetime, channel: Channel | str | None = None) -> frozenset[str]:
        """Principals with an active authorisation at `at` (on `channel`, if given): lets a
        channel skip per-packet work when nobody is a subject."""
        chan = Channel(channel) if channel is not None else None
        return frozenset(
            a.subject
            for a in self.authorisations
            if (chan is None or chan in a.channels) and a.active_at(at)
        )

    def get(self, ref: str) -> Authorisation | None:
        return next((a for a in self.authorisations if a.ref == ref), None)

    def is_do_not_decrypt(self, server_name: str) -> bool:
        return glob_match(server_name, self.do_not_decrypt)

    def resolve(self, **identifiers: Any) -> str | None:
        """The identity map's answer (username=, email=, ip= with at=)."""
        return self.identity.resolve(**identifiers)


def load_snapshot(
    conn: sqlite3.Connection,
    *,
    do_not_decrypt: Iterable[str] = (),
    identity_loader: Callable[[sqlite3.Connection], IdentityResolver] | None = None,
    version: int = 0,
) -> Snapshot:
    """Authorisations and identity map read in one transaction: one consistent view."""
    loader = identity_loader or load_identity_map
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        auths = load_all(conn)
        identity = loader(conn)
    finally:
        if own:
            conn.execute("COMMIT")
    return Snapshot.build(auths, identity, do_not_decrypt, version)

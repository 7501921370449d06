"""The identity map itself, pure: lookup structures and conflict resolution, no SQL, no I/O.

`IdentityMap.build(rows)` turns validated feed rows (`identity_feed.FeedRow`) into an immutable
map whose `resolve()` answers which principal a proxy username, an email address or an IP address
at an instant belongs to. The rules a reviewer asks about live here, readable without SQL:

- a username or an address (email or alias) mapped to two principals resolves to nobody;
- an IP resolves to the one principal whose lease covers the instant; where leases of different
  principals overlap, it resolves to nobody during the overlap;
- every such case is a `Conflict`, reported with the feed lines involved.

Storage (the `identity_*` tables of registry.sqlite), the importer and its audit entry are in
`appliance.policy.identity`, which re-exports these names.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

from appliance.policy.identity_feed import (
    OPEN_END,
    FeedRow,
    from_us,
    normalise_email,
    normalise_ip,
    to_us,
)
from store.clock import format_utc

__all__ = ["EMPTY", "Conflict", "IdentityMap", "Lease"]


@dataclass(frozen=True)
class Lease:
    ip: str
    principal: str
    valid_from: datetime
    valid_to: datetime | None  # None: open
    line: int

    def state(self, now: datetime) -> str:
        if now < self.valid_from:
            return "future"
        if self.valid_to is not None and now >= self.valid_to:
            return "past"
        return "current"


@dataclass(frozen=True)
class Conflict:
    """An identifier mapped to more than one principal; it resolves to nobody (for an IP, during
    `window`). `lines` are the feed lines of the rows involved, in order."""

    kind: str  # "username", "email" (addresses and aliases) or "ip"
    value: str
    principals: tuple[str, ...]
    lines: tuple[int, ...]
    window: tuple[datetime, datetime | None] | None = None

    def describe(self, source: str) -> str:
        others = ", ".join(
            f"{p} (line {n})" for p, n in zip(self.principals[:-1], self.lines[:-1], strict=True)
        )
        head = (
            f"{source}:{self.lines[-1]}: conflict: {self.kind} {self.value} of "
            f"{self.principals[-1]} is also mapped to {others}"
        )
        if self.window is None:
            return head + "; it resolves to nobody"
        start, end = self.window
        until = format_utc(end) if end is not None else "open end"
        return f"{head} from {format_utc(start)} to {until}; it resolves to nobody then"


@dataclass(frozen=True)
class _Windows:
    """An IP's sorted, disjoint [start, end) windows with one owner each (µs since epoch)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[str, ...]

    def at(self, instant: int) -> str | None:
        i = bisect_right(self.starts, instant) - 1
        if i >= 0 and instant < self.ends[i]:
            return self.owners[i]
        return None

    def span(self, instant: int) -> tuple[str | None, int, int]:
        """`at(instant)` and the window [start, end) around it over which that answer holds."""
        i = bisect_right(self.starts, instant) - 1
        if i >= 0 and instant < self.ends[i]:
            return self.owners[i], self.starts[i], self.ends[i]
        nxt = self.starts[i + 1] if i + 1 < len(self.starts) else OPEN_END
        return None, self.ends[i] if i >= 0 else -OPEN_END, nxt


def _windows_and_conflicts(ip: str, rows: list[FeedRow]) -> tuple[_Windows, list[Conflict]]:
    """Sweep the leases of one IP: owned windows where exactly one principal holds it, and one
    conflict per overlapping pair of leases of different principals."""
    events: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        assert row.valid_from is not None and row.valid_to is not None
        events[row.valid_from].append((1, row.principal))
        if row.valid_to != OPEN_END:
            events[row.valid_to].append((-1, row.principal))
    active: Counter[str] = Counter()
    segments: list[tuple[int, int, str]] = []
    times = sorted(events)
    for i, instant in enumerate(times):
        for delta, principal in events[instant]:
            active[principal] += delta
            if active[principal] == 0:
                del active[principal]
        end = times[i + 1] if i + 1 < len(times) else OPEN_END
        if len(active) == 1:
            owner = next(iter(active))
            if segments and segments[-1][1] == instant and segments[-1][2] == owner:
                segments[-1] = (segments[-1][0], end, owner)
            else:
                segments.append((instant, end, owner))
    conflicts: list[Conflict] = []
    ordered = sorted(rows, key=lambda r: (r.valid_from or 0, r.line))
    open_rows: list[FeedRow] = []
    for row in ordered:
        start = row.valid_from or 0
        open_rows = [r for r in open_rows if (r.valid_to or 0) > start]
        for other in open_rows:
            if other.principal != row.principal:
                first, second = sorted((other, row), key=lambda r: r.line)
                end = min(other.valid_to or OPEN_END, row.valid_to or OPEN_END)
                conflicts.append(
                    Conflict(
                        "ip",
                        ip,
                        (first.principal, second.principal),
                        (first.line, second.line),
                        (from_us(start), None if end == OPEN_END else from_us(end)),
                    )
                )
        open_rows.append(row)
    windows = _Windows(
        tuple(s[0] for s in segments), tuple(s[1] for s in segments), tuple(s[2] for s in segments)
    )
    return windows, conflicts


def _instant(at: datetime | float | int) -> int:
    if isinstance(at, datetime):
        return to_us(at)
    return round(at * 1_000_000)


@dataclass(frozen=True, eq=False)
class IdentityMap:
    """An immutable identity map. Build it with `IdentityMap.build(rows)` or `load_identity`."""

    principals: frozenset[str]
    rows: tuple[FeedRow, ...]
    conflicts: tuple[Conflict, ...]
    generation: int = 0
    source: str | None = None
    _usernames: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    _emails: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    _ips: Mapping[str, _Windows] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, rows: Iterable[FeedRow], *, generation: int = 0, source: str | None = None
    ) -> IdentityMap:
        rows = tuple(rows)
        principals = frozenset(r.principal for r in rows)
        names: dict[str, dict[str, list[FeedRow]]] = {"username": {}, "email": {}}
        leases: dict[str, list[FeedRow]] = defaultdict(list)
        for row in rows:
            if row.kind == "username":
                names["username"].setdefault(row.value, []).append(row)
            elif row.kind in ("email", "alias"):
                names["email"].setdefault(row.value, []).append(row)
            elif row.kind == "ip":
                leases[row.value].append(row)
        conflicts: list[Conflict] = []
        resolved: dict[str, dict[str, str | None]] = {"username": {}, "email": {}}
        for kind, table in names.items():
            for value, found in table.items():
                owners = list(dict.fromkeys(r.principal for r in found))
                if len(owners) == 1:
                    resolved[kind][value] = owners[0]
                    continue
                resolved[kind][value] = None
                firsts = [next(r for r in found if r.principal == p) for p in owners]
                conflicts.append(
                    Conflict(kind, value, tuple(owners), tuple(r.line for r in firsts))
                )
        ips: dict[str, _Windows] = {}
        for ip, ip_rows in leases.items():
            ips[ip], ip_conflicts = _windows_and_conflicts(ip, ip_rows)
            conflicts.extend(ip_conflicts)
        conflicts.sort(key=lambda c: (c.lines[-1], c.lines))
        return cls(
            principals,
            rows,
            tuple(conflicts),
            generation,
            source,
            MappingProxyType(resolved["username"]),
            MappingProxyType(resolved["email"]),
            MappingProxyType(ips),
        )

    # -- resolution ------------------------------------------------------------------------
    def resolve(
        self,
        *,
        username: str | None = None,
        email: str | None = None,
        ip: str | None = None,
        at: datetime | None = None,
    ) -> str | None:
        """The principal an identifier belongs to, or None (unknown, conflicting, or an IP
        outside every lease). Exactly one identifier per call; `ip` needs `at`."""
        given = (username is not None) + (email is not None) + (ip is not None)
        if given != 1:
            raise ValueError("resolve() takes exactly one of username, email, ip")
        if username is not None:
            return self._usernames.get(username)
        if email is not None:
            return self._emails.get(normalise_email(email))
        if at is None:
            raise ValueError("resolve(ip=...) needs at=")
        return self.resolve_ip(ip, at)  # type: ignore[arg-type]

    def _windows(self, ip: str) -> _Windows | None:
        found = self._ips.get(ip)
        if found is None:
            try:
                canonical = normalise_ip(ip)
            except ValueError:
                return None
            found = self._ips.get(canonical)
        return found

    def resolve_ip(self, ip: str, at: datetime | float | int) -> str | None:
        """The principal holding `ip` at `at` (a datetime, or POSIX seconds), or None."""
        windows = self._windows(ip)
        return windows.at(_instant(at)) if windows is not None else None

    def resolve_ip_span(self, ip: str, at: datetime | float | int) -> tuple[str | None, int, int]:
        """`resolve_ip` plus the window [start, end), in microseconds since the epoch, over
        which the same answer holds (the lease boundaries around `at`), so a caller deciding
        packet by packet need not ask again inside it."""
        windows = self._windows(ip)
        if windows is None:
            return None, -OPEN_END, OPEN_END
        return windows.span(_instant(at))

    def resolve_ip_many(
        self, ips: Sequence[str], ats: Sequence[datetime | float | int]
    ) -> list[str | None]:
        """`resolve_ip` over parallel sequences (the capture path's batches)."""
        if len(ips) != len(ats):
            raise ValueError("resolve_ip_many: ips and ats differ in length")
        cache: dict[str, _Windows | None] = {}
        out: list[str | None] = []
        for ip, at in zip(ips, ats, strict=True):
            if ip in cache:
                windows = cache[ip]
            else:
                windows = cache[ip] = self._windows(ip)
            out.append(windows.at(_instant(at)) if windows is not None else None)
        return out

    @property
    def has_ip_leases(self) -> bool:
        """Whether any IP lease is mapped (if not, every address resolves to nobody, always)."""
        return bool(self._ips)

    @cached_property
    def _packed_ips(self) -> dict[bytes, _Windows]:
        """The leases keyed by 16-byte address (IPv4 as IPv4-mapped IPv6, as the capture
        path keeps addresses); built on first use, once per map."""
        out: dict[bytes, _Windows] = {}
        for ip, windows in self._ips.items():
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                continue
            key = (b"\x00" * 10 + b"\xff\xff" if addr.version == 4 else b"") + addr.packed
            if key not in out or normalise_ip(ip) == ip:  # the canonical text wins
                out[key] = windows
        return out

    def resolve_packed_spans(
        self, packed: Sequence[bytes], ats_us: Sequence[int]
    ) -> dict[int, tuple[str | None, int, int]]:
        """`resolve_ip_span` over 16-byte addresses (IPv4-mapped for IPv4) at instants in
        microseconds since the epoch, for the capture path's new flows: one dict lookup per
        address, no text. Returns {index: (principal, start, end)} only for the addresses that
        have leases; every other address resolves to nobody over (-OPEN_END, OPEN_END)."""
        if len(packed) != len(ats_us):
            raise ValueError("resolve_packed_spans: packed and ats_us differ in length")
        table = self._packed_ips if self._ips else {}
        out: dict[int, tuple[str | None, int, int]] = {}
        if not table:
            return out
        get = table.get
        for i, key in enumerate(packed):
            windows = get(key)
            if windows is not None:
                out[i] = windows.span(int(ats_us[i]))
        return out

    # -- description -----------------------------------------------------------------------
    def describe(self, principal: str) -> dict[str, Any] | None:
        """A principal's identifiers and leases (with the feed lines), or None if unknown."""
        if principal not in self.principals:
            return None
        mine = [r for r in self.rows if r.principal == principal]
        conflicted = {
            (c.kind, c.value)
            for c in self.conflicts
            if principal in c.principals and c.kind != "ip"
        }
        out: dict[str, Any] = {
            "principal": principal,
            "usernames": [],
            "emails": [],
            "aliases": [],
            "leases": [],
        }
        plural = {"username": "usernames", "email": "emails", "alias": "aliases"}
        for row in mine:
            if row.kind in plural:
                kind = "username" if row.kind == "username" else "email"
                out[plural[row.kind]].append(
                    {
                        "value": row.value,
                        "line": row.line,
                        "conflict": (kind, row.value) in conflicted,
                    }
                )
            elif row.kind == "ip":
                assert row.valid_from is not None and row.valid_to is not None
                out["leases"].append(
                    Lease(
                        row.value,
                        principal,
                        from_us(row.valid_from),
                        None if row.valid_to == OPEN_END else from_us(row.valid_to),
                        row.line,
                    )
                )
        out["conflicts"] = [c for c in self.conflicts if principal in c.principals]
        return out


EMPTY = IdentityMap.build(())

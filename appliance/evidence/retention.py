"""What retention makes due, and which archives' retention review is due. Reads only.

- Metadata: a partition `metadata/stream=S/date=D` is due once every row in it is older than
  `[retention] S_days`, i.e. when `today - D > S_days` days (UTC). A partition holding a row of a
  held reference (`refs` column) is kept whole: rows are never rewritten.
- Archives: an authorisation's archive (archive/REF, keystore/REF) is due `retention_days` (the
  application's `--retention-days`, else `[retention] default_days`) after the authorisation
  ended (expiry or cancellation). The latest review decision overrides: `retain` keeps it until
  `review_days` after the decision; `delete` makes it due at once (once the authorisation has
  ended). An evidence hold blocks removal whatever else says so. An archive directory with no
  authorisation in the registry is never touched (it is listed as unknown).
- Review: an ended authorisation whose archive still holds segments has its retention review due
  `review_days` after it ended or after its last review decision.

`retention_apply` removes what `plan` lists as due.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from appliance.evidence import holds as holds_mod
from appliance.policy.model import Authorisation
from appliance.policy.registry_store import load_all
from store.clock import format_utc
from store.keys import REF_RE
from store.paths import DataPaths
from store.schemas import STREAMS

DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Settings:
    """`[retention]`: metadata days per stream, archive days after the end, review interval."""

    stream_days: dict[str, int]
    default_days: int
    review_days: int

    @classmethod
    def from_config(cls, get: Callable[[str], Any]) -> Settings:
        return cls(
            {s: int(get(f"retention.{s}_days")) for s in STREAMS},
            int(get("retention.default_days")),
            int(get("retention.review_days")),
        )


@dataclass
class Partition:
    stream: str
    date: str
    path: Path
    files: int
    held_by: list[str] = field(default_factory=list)

    @property
    def due(self) -> bool:
        return not self.held_by

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "date": self.date,
            "files": self.files,
            "status": "due" if self.due else "held",
            "held_by": self.held_by,
        }


@dataclass
class ArchiveItem:
    """An ended authorisation's archive and what retention says about it."""

    ref: str
    ended_at: datetime
    retention_days: int
    remove_at: datetime
    status: str  # due | held | retained | kept
    why: str
    segments: list[int]
    key_files: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ended_at"] = format_utc(self.ended_at)
        data["remove_at"] = format_utc(self.remove_at)
        return data


@dataclass
class Plan:
    now: datetime
    partitions: list[Partition] = field(default_factory=list)
    archives: list[ArchiveItem] = field(default_factory=list)
    unknown_archives: list[str] = field(default_factory=list)
    bad_partitions: list[str] = field(default_factory=list)

    @property
    def due_partitions(self) -> list[Partition]:
        return [p for p in self.partitions if p.due]

    @property
    def due_archives(self) -> list[ArchiveItem]:
        return [a for a in self.archives if a.status == "due"]

    def counts(self) -> dict[str, int]:
        return {
            "metadata_partitions_due": len(self.due_partitions),
            "metadata_partitions_held": len(self.partitions) - len(self.due_partitions),
            "archives_due": len(self.due_archives),
            "archives_held": sum(a.status == "held" for a in self.archives),
            "archives_retained": sum(a.status == "retained" for a in self.archives),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": format_utc(self.now),
            "counts": self.counts(),
            "metadata": [p.as_dict() for p in self.partitions],
            "archives": [a.as_dict() for a in self.archives if a.status != "kept"],
            "unknown_archives": self.unknown_archives,
            "bad_partitions": self.bad_partitions,
        }


# -- metadata ----------------------------------------------------------------------------------
def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _refs_in(files: Iterable[Path], held: set[str]) -> list[str]:
    """Held references some row of these Parquet files carries (only the `refs` column read)."""
    found: set[str] = set()
    for path in files:
        if path.suffix != ".parquet":
            continue
        try:
            column = pq.read_table(path, columns=["refs"]).column("refs")
        except Exception:  # an unreadable file: keep the partition rather than guess
            return sorted(held)
        for refs in column.to_pylist():
            found.update(r for r in refs or () if r in held)
    return sorted(found)


def due_partitions(
    paths: DataPaths, settings: Settings, today: date, held: set[str], bad: list[str]
) -> list[Partition]:
    out: list[Partition] = []
    for stream in STREAMS:
        root = paths.metadata / f"stream={stream}"
        if not root.is_dir():
            continue
        limit = settings.stream_days[stream]
        for entry in sorted(root.iterdir()):
            m = DATE_DIR.fullmatch(entry.name)
            try:
                day = date.fromisoformat(m.group(1)) if m and entry.is_dir() else None
            except ValueError:
                day = None
            if day is None:
                bad.append(f"metadata/stream={stream}/{entry.name}")
                continue
            if (today - day).days <= limit:
                continue
            files = _files(entry)
            blocked = _refs_in(files, held) if held else []
            out.append(Partition(stream, day.isoformat(), entry, len(files), blocked))
    return out


# -- archives ----------------------------------------------------------------------------------
def has_archive(paths: DataPaths, ref: str) -> bool:
    """Something of REF's archive is left: its directory or a wrapped key."""
    keys = paths.keystore / ref
    return (paths.archive / ref).is_dir() or (keys.is_dir() and any(keys.glob("*.age")))


def has_content(paths: DataPaths, ref: str) -> bool:
    """REF's archive holds segments (what a retention review is about)."""
    return bool(_segments(paths, ref))


def _segments(paths: DataPaths, ref: str) -> list[int]:
    from store.segment import known_segment_numbers  # uploaded segments count too

    return known_segment_numbers(paths.archive / ref)


def archive_item(
    paths: DataPaths,
    auth: Authorisation,
    settings: Settings,
    now: datetime,
    hold: holds_mod.Event | None,
    review: holds_mod.Event | None,
) -> ArchiveItem | None:
    """What retention says about REF's archive at `now`; None while it is in force or gone."""
    ended = auth.ended_at()
    if now < ended or not has_archive(paths, auth.ref):
        return None
    days = auth.application.retention_days or settings.default_days
    remove_at = ended + timedelta(days=days)
    status, why = "kept", f"retention period ({days} days after the end) runs to {remove_at:%F}"
    if review is not None and review.kind == "delete":
        status, why = "due", f"review decision delete on {review.at:%F}"
        remove_at = review.at
    elif now >= remove_at:
        status, why = "due", f"retention period of {days} days after the end has passed"
        if review is not None:
            until = review.at + timedelta(days=settings.review_days)
            if now < until:
                status, why = "retained", f"review decision retain on {review.at:%F}"
                why += f", until the next review on {until:%F}"
    if status == "due" and hold is not None:
        status, why = "held", f"evidence hold since {hold.at:%F} ({why})"
    keys = paths.keystore / auth.ref
    key_files = len(list(keys.glob("*.age"))) if keys.is_dir() else 0
    return ArchiveItem(
        auth.ref, ended, days, remove_at, status, why, _segments(paths, auth.ref), key_files
    )


def next_review(auth: Authorisation, review: holds_mod.Event | None, review_days: int) -> datetime:
    base = auth.ended_at() if review is None else max(review.at, auth.ended_at())
    return base + timedelta(days=review_days)


def review_due_refs(
    conn: sqlite3.Connection, paths: DataPaths, now: datetime, review_days: int
) -> dict[str, datetime]:
    """REF -> when its retention review fell due, for ended authorisations whose archive is
    still kept and whose review (every `review_days` after the end or last decision) is due."""
    reviews = holds_mod.latest_reviews(conn)
    due: dict[str, datetime] = {}
    for auth in load_all(conn):
        if now < auth.ended_at() or not has_content(paths, auth.ref):
            continue
        when = next_review(auth, reviews.get(auth.ref), review_days)
        if now >= when:
            due[auth.ref] = when
    return due


def plan(conn: sqlite3.Connection, paths: DataPaths, settings: Settings, now: datetime) -> Plan:
    """Everything retention makes due at `now` (nothing is removed here)."""
    result = Plan(now)
    held = holds_mod.active_holds(conn)
    reviews = holds_mod.latest_reviews(conn)
    result.partitions = due_partitions(
        paths, settings, now.date(), set(held), result.bad_partitions
    )
    known: set[str] = set()
    for auth in load_all(conn):
        known.add(auth.ref.lower())
        item = archive_item(paths, auth, settings, now, held.get(auth.ref), reviews.get(auth.ref))
        if item is not None:
            result.archives.append(item)
    if paths.archive.is_dir():
        result.unknown_archives = sorted(
            p.name
            for p in paths.archive.iterdir()
            if p.is_dir() and REF_RE.fullmatch(p.name) and p.name.lower() not in known
        )
    return result

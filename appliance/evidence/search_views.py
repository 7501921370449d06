"""The search views: one per stream, over only the partitions a query's time range needs.

Each stream (`web`, `email`, `flow`, `dns`) is a view over `read_parquet([files],
hive_partitioning=true, union_by_name=true)` (a local root), or over a pyarrow dataset of the
same objects registered in the connection (an object-store root, search_remote.py), where the
file list holds only the partitions
(`stream=S/date=D/hour=H/`) that overlap `--from`/`--to`: a one-day query never opens a file of
another day, not even its footer. A stream with no file gives an empty view with the schema's
columns. The filters are part of the views, so `--sql` sees only what they let through.

Under a `Scope` (a person-level search: REF, its subject, REF's pseudonym key) the identifying
columns hold clear values only where they are the subject's own; everyone else's become
`pseud:` + a keyed hash (pseudonym.py). `refs` and `record_ids` keep only REF's entries, so a
search never shows who else is monitored. Filters on the subject's principal, the time range,
host and community id apply to the stored columns (so DuckDB pushes them into the scan); a filter
on a pseudonym or an IP applies to what is shown, so it never matches a third party's clear value.
An `email` row's `helo` (the sending machine's name) is pseudonymised unless the row is the
subject's, and `--host` matches it as shown. A `flow` row's `server_ip` is pseudonymised too
when the responder is internal (`local_resp`) and the row is not the subject's: capture
resolves such a row's principal from that address.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from appliance.evidence.pseudonym import Pseudonymiser
from store import schemas

IDENTIFYING = (
    "principal",
    "client_ip",
    "proxy_user",
    "mail_from",
    "rcpt_to",
    "auth_user",
    "community_id",
)
"""Columns that name a person: output or filters on them make a search person-level.
`community_id` is an unkeyed hash of the 5-tuple: with the ports and server address beside it,
trying every internal client address (2^16 hashes for a /16) gives the clear `client_ip` back."""
REF_COLUMNS = ("refs", "record_ids", "decision")
"""Columns that show who is monitored (`decision` is `intercepted` for subjects only):
person-level too; under a Scope they show REF's entries only."""
MIN_PERSONS = 5
"""An aggregate without a ref shows only groups of at least this many people (distinct
principals, or client addresses where nobody resolved): `--host` a single person uses with
`--count-by date` would otherwise show when that person browsed it."""
PERSON_KEY = "coalesce(principal, client_ip)"
DERIVED = {"date": "CAST(ts AS DATE)", "hour": "hour(ts)"}
"""Extra names `--count-by` and `--columns` accept (UTC date and hour of `ts`)."""
COMMON = ("stream", *schemas.JOIN_KEYS, "community_id")
"""Columns of a search across every stream (`--community-id` without `--stream`)."""
HOST_COLUMNS = {
    "web": ("host", "server_name"),
    "flow": ("server_name", "http_host"),
    "dns": ("qname",),
    "email": ("helo", "upstream"),
}


@dataclass(frozen=True)
class Query:
    stream: str | None = None
    principal: str | None = None
    ip: str | None = None
    host: str | None = None
    community_id: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    ref: str | None = None
    reason: str | None = None
    recorded_only: bool = False
    sql: str | None = None
    columns: tuple[str, ...] = ()
    count_by: tuple[str, ...] = ()
    limit: int | None = None

    def streams(self) -> tuple[str, ...]:
        return (self.stream,) if self.stream else schemas.STREAMS

    def output_columns(self) -> list[str]:
        if self.count_by:
            return [*self.count_by, "count"]
        if self.columns:
            return list(self.columns)
        if self.stream:
            return schemas.columns(self.stream)
        return list(COMMON)

    def person_level_because(self) -> str | None:
        """Why this search can single out a person (None for an aggregate or anonymous one)."""
        if self.sql is not None:
            return "--sql"
        for flag, value in (("--principal", self.principal), ("--ip", self.ip)):
            if value:
                return flag
        if self.recorded_only:
            return "--recorded-only"
        shown = [c for c in self.output_columns() if c in IDENTIFYING or c in REF_COLUMNS]
        if shown:
            return f"output column {shown[0]!r}"
        if not self.count_by:  # one row per event: its time and host can single out a person
            return "row-level output (without --ref, only --count-by aggregates)"
        return None

    def describe(self) -> dict[str, Any]:
        """The full query for the audit log (filters and SQL text; never results)."""
        out: dict[str, Any] = {}
        for name in ("stream", "principal", "ip", "host", "community_id", "sql", "limit"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        for name in ("columns", "count_by"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        if self.recorded_only:
            out["recorded_only"] = True
        return out


@dataclass(frozen=True)
class Scope:
    """What a person-level search under REF may see in clear: its subject's own values."""

    ref: str
    subject: str
    pseud: Pseudonymiser
    emails: frozenset[str] = field(default_factory=frozenset)
    usernames: frozenset[str] = field(default_factory=frozenset)


# -- partitions ------------------------------------------------------------------------------
def hour_start(date_dir: str, hour_dir: str) -> dt.datetime | None:
    try:
        day = dt.date.fromisoformat(date_dir.removeprefix("date="))
        hour = int(hour_dir.removeprefix("hour="))
    except ValueError:
        return None
    if not 0 <= hour <= 23:
        return None
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


def partition_files(
    metadata_root: Path, stream: str, start: dt.datetime | None, end: dt.datetime | None
) -> list[Path]:
    """The Parquet files of `stream` in hours that overlap [start, end), sorted."""
    base = metadata_root / f"stream={stream}"
    if not base.is_dir():
        return []
    files: list[Path] = []
    for date_dir in sorted(base.glob("date=*")):
        if not date_dir.is_dir():
            continue
        for hour_dir in sorted(date_dir.glob("hour=*")):
            begins = hour_start(date_dir.name, hour_dir.name)
            if begins is None or not hour_dir.is_dir():
                continue
            if start and begins + dt.timedelta(hours=1) <= start:
                continue
            if end and begins >= end:
                continue
            files.extend(p for p in sorted(hour_dir.glob("*.parquet")) if p.name[0] not in "._")
    return files


# -- views -----------------------------------------------------------------------------------
def lit(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _ts(value: dt.datetime) -> str:
    return f"TIMESTAMPTZ {lit(value.astimezone(dt.UTC).isoformat())}"


def duck_type(typ: pa.DataType) -> str:
    if pa.types.is_timestamp(typ):
        return "TIMESTAMPTZ"
    if pa.types.is_list(typ):
        return duck_type(typ.value_type) + "[]"
    simple = {
        pa.string(): "VARCHAR",
        pa.int64(): "BIGINT",
        pa.uint16(): "USMALLINT",
        pa.uint8(): "UTINYINT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
    }
    return simple[typ]


def _source(stream: str, files: list[Path] | str) -> str:
    if isinstance(files, str):  # a dataset registered in the connection (search_remote.py)
        return files
    if not files:
        cols = ", ".join(
            f"CAST(NULL AS {duck_type(f.type)}) AS {f.name}" for f in schemas.schema(stream)
        )
        return f"(SELECT {cols} WHERE false)"
    listed = ", ".join(lit(str(p)) for p in files)
    return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"


def _in(expr: str, values: frozenset[str]) -> str:
    return f"{expr} IN ({', '.join(lit(v) for v in sorted(values))})" if values else "false"


def _own(stream: str, column: str, scope: Scope) -> str:
    """SQL: the row's `column` holds the subject's own value."""
    subj = f"principal = {lit(scope.subject)}"
    out = f"{subj} AND direction = 'outbound'"
    inbound = f"{subj} AND direction = 'inbound'"
    if column == "client_ip":
        return out if stream == "email" else subj
    if column == "proxy_user":
        return f"{subj} OR {_in('proxy_user', scope.usernames)}"
    if column == "auth_user":
        return f"({out}) OR {_in('lower(auth_user)', scope.emails | scope.usernames)}"
    if column == "mail_from":
        return f"({out}) OR {_in('lower(mail_from)', scope.emails)}"
    if column == "rcpt_to":
        return f"({inbound}) OR {_in('lower(rcpt_to)', scope.emails)}"
    return subj


def _projection(stream: str, scope: Scope | None) -> str:
    names = schemas.columns(stream)
    if scope is None:
        return ", ".join(names)
    cols = []
    ref = lit(scope.ref)
    for name in names:
        if name in IDENTIFYING:
            pseud = scope.pseud.sql(name)
            cols.append(f"CASE WHEN {_own(stream, name, scope)} THEN {name} ELSE {pseud} END")
        elif stream == "email" and name == "helo":  # a sender's machine name: theirs
            own = f"principal = {lit(scope.subject)}"
            cols.append(f"CASE WHEN {own} THEN {name} ELSE {scope.pseud.sql(name)} END")
        elif stream == "flow" and name == "server_ip":  # an internal responder is a person
            own = f"principal = {lit(scope.subject)} OR local_resp IS NOT TRUE"
            cols.append(f"CASE WHEN {own} THEN {name} ELSE {scope.pseud.sql(name)} END")
        elif name == "refs":
            cols.append(f"list_filter(refs, lambda r: r = {ref})")
        elif name == "decision":  # intercepted under another REF: not this search's business
            cols.append(
                f"CASE WHEN decision = 'intercepted' AND NOT list_contains(refs, {ref}) "
                "THEN NULL ELSE decision END"
            )
        elif name == "record_ids":
            cols.append(
                f"list_filter(record_ids, lambda r: starts_with(r, {lit(scope.ref + '/')}))"
            )
        else:
            cols.append(name)
        cols[-1] = cols[-1] if cols[-1] == name else f"{cols[-1]} AS {name}"
    return ", ".join(cols)


def _filters(stream: str, query: Query, scope: Scope | None) -> tuple[list[str], list[str]]:
    """(filters on the stored columns, filters on the shown, pseudonymised columns)."""
    raw: list[str] = []
    shown: list[str] = []
    if query.start:
        raw.append(f"ts >= {_ts(query.start)}")
    if query.end:
        raw.append(f"ts < {_ts(query.end)}")
    if query.principal:
        subject = scope is not None and query.principal == scope.subject
        (raw if subject else shown).append(f"principal = {lit(query.principal)}")
    if query.ip:
        shown.append(f"(server_ip = {lit(query.ip)} OR client_ip = {lit(query.ip)})")
    if query.host:
        host = query.host.lower().rstrip(".")
        tests = [f"(lower({c}) = {lit(host)} OR lower({c}) LIKE {lit('%.' + host)})"
                 for c in HOST_COLUMNS[stream]]  # fmt: skip
        # HELO names a third party's machine ("Bobs-MacBook-Pro.local"): matched as shown
        (shown if stream == "email" and scope is not None else raw).append(
            "(" + " OR ".join(tests) + ")"
        )
    if query.community_id:
        raw.append(f"community_id = {lit(query.community_id)}")
    if stream == "web" and scope is not None:
        # A third party's request recorded under another REF: one row per decrypted request
        # (a method, a status) where everyone else has one per tunnel. Shown, even with
        # `decision` blanked, it tells that they are monitored: left out.
        raw.append(
            f"NOT coalesce(decision = 'intercepted' AND NOT list_contains(refs, {lit(scope.ref)})"
            f" AND principal IS DISTINCT FROM {lit(scope.subject)}, false)"
        )
    if query.recorded_only and scope is not None:
        raw.append(f"list_contains(refs, {lit(scope.ref)})")
    return raw, shown


def view_sql(stream: str, files: list[Path] | str, query: Query, scope: Scope | None) -> str:
    """The view of `stream` over local `files`, or over the relation named `files`."""
    raw, shown = _filters(stream, query, scope)
    where = f" WHERE {' AND '.join(raw)}" if raw else ""
    inner = f"SELECT {_projection(stream, scope)} FROM {_source(stream, files)}{where}"
    return f"SELECT * FROM ({inner})" + (f" WHERE {' AND '.join(shown)}" if shown else "")

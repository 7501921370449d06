"""`lbm search`: check, authorise and run a search over the stream views (search_views.py).

A search that can single out a person (`Query.person_level_because`) needs `--ref` and
`--reason`, and the acting login user must be allowed on REF (access.py); it then runs under a
`Scope` that pseudonymises everyone but REF's subject. `--sql` must pass sqlguard's parse-tree
check and runs on a connection limited to the metadata root and locked.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from appliance.evidence import sqlguard
from appliance.evidence.access import AccessRefused, Acting, check_access
from appliance.evidence.pseudonym import PREFIX, Pseudonymiser, key_for
from appliance.evidence.search_remote import (
    MetadataRoot,
    partition_objects,
    register,
    stream_dataset,
)
from appliance.evidence.search_views import (
    COMMON,
    DERIVED,
    MIN_PERSONS,
    PERSON_KEY,
    Query,
    Scope,
    lit,
    partition_files,
    view_sql,
)
from appliance.policy.registry_store import load_one
from store import schemas
from store import sqlite as store_sqlite

TIME_LIMIT_SECONDS = 600.0  # a search that runs longer is stopped (con.interrupt)

__all__ = [
    "MIN_PERSONS",
    "Query",
    "Scope",
    "SearchError",
    "SearchFailed",
    "SearchRefused",
    "authorise",
    "run",
    "validate",
]


class SearchError(Exception):
    """The search is malformed (usage error); the message names the option."""


class SearchFailed(SearchError):
    """The search could not run (an unreadable file...): exit 1, not a usage error."""


class SearchRefused(Exception):
    """The search is not allowed; `code` is the exit status (2 usage, 1 refused)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def validate(query: Query) -> None:
    """SearchError for a malformed query (before any access check)."""
    if query.stream is not None:
        schemas.schema(query.stream)  # SchemaError (a StoreError) names the streams
    if query.sql is not None and (query.columns or query.count_by or query.stream):
        raise SearchError("--sql cannot be combined with --stream, --columns or --count-by")
    if query.sql is None and not query.stream and not query.community_id:
        raise SearchError("give --stream NAME, --community-id ID or --sql SELECT")
    if query.columns and query.count_by:
        raise SearchError("--columns and --count-by cannot be combined")
    if query.count_by and not query.stream:
        raise SearchError("--count-by needs --stream NAME")
    known = set(COMMON) if not query.stream else set(schemas.columns(query.stream))
    for opt, names in (("--columns", query.columns), ("--count-by", query.count_by)):
        for name in names:
            if name not in known and name not in DERIVED:
                where = f"stream {query.stream!r}" if query.stream else "every stream"
                raise SearchError(f"{opt}: no column {name!r} in {where}")
    if query.start and query.end and query.start >= query.end:
        raise SearchError("--from must be before --to")
    if query.limit is not None and query.limit < 1:
        raise SearchError("--limit must be at least 1")


def _subject_identifiers(conn: sqlite3.Connection, subject: str) -> tuple[set[str], set[str]]:
    emails: set[str] = set()
    usernames: set[str] = set()
    try:
        rows = conn.execute(
            "SELECT kind, value FROM identity_rows WHERE principal = ?", (subject,)
        ).fetchall()
    except sqlite3.OperationalError:  # no identity feed loaded yet
        rows = []
    for kind, value in rows:
        if kind in ("email", "alias"):
            emails.add(str(value).lower())
        elif kind == "username":
            usernames.add(str(value))
    return emails, usernames


def authorise(
    query: Query, registry: Path, login: str, custodians: Sequence[str]
) -> tuple[Acting | None, Scope | None]:
    """Check who may run `query`: SearchRefused, else (acting investigator, scope) when a REF
    is given. The pseudonym key is made on first use, so this opens the registry writable."""
    why = query.person_level_because()
    if why and not (query.ref and query.reason and query.reason.strip()):
        raise SearchRefused(
            f"this search can single out a person ({why}): it needs --ref REF and --reason TEXT",
            2,
        )
    if not query.ref:
        return None, None
    try:
        acting = check_access(registry, login, query.ref, custodians)
    except AccessRefused as exc:
        raise SearchRefused(str(exc)) from None
    conn = store_sqlite.connect(registry)
    try:
        auth = load_one(conn, query.ref)
        if auth is None:  # check_access found it a moment ago
            raise SearchRefused(f"{query.ref}: no such authorisation")
        emails, usernames = _subject_identifiers(conn, auth.subject)
        scope = Scope(
            query.ref,
            auth.subject,
            Pseudonymiser(key_for(conn, query.ref)),
            frozenset(emails),
            frozenset(usernames),
        )
    finally:
        conn.close()
    p = query.principal
    if p and p != scope.subject and not p.startswith(PREFIX):
        raise SearchRefused(
            f"--principal {p} is not the subject of {scope.ref}: name a third party by the "
            f"pseudonym ({PREFIX}...) a search under {scope.ref} showed"
        )
    return acting, scope


def _select(query: Query, scope: Scope | None = None) -> str:
    """The SQL run over the views when no `--sql` is given (an aggregate without a scope
    leaves out groups of fewer than MIN_PERSONS people)."""
    limit = f" LIMIT {query.limit}" if query.limit else ""
    if query.sql is not None:
        if not query.limit:
            return query.sql
        body = query.sql.strip().rstrip(";").rstrip()
        return f"SELECT * FROM (\n{body}\n){limit}"  # newlines: a trailing -- comment stays one
    if query.count_by:
        exprs = ", ".join(f"{DERIVED[c]} AS {c}" if c in DERIVED else c for c in query.count_by)
        having = f" HAVING count(DISTINCT {PERSON_KEY}) >= {MIN_PERSONS}" if scope is None else ""
        return (
            f"SELECT {exprs}, count(*) AS count FROM {query.stream} "
            f"GROUP BY ALL{having} ORDER BY ALL{limit}"
        )
    cols = [f"{DERIVED[c]} AS {c}" if c in DERIVED else c for c in query.columns]
    if query.stream:
        picked = ", ".join(cols) if cols else "*"
        order = " ORDER BY ts" if not cols or "ts" in query.columns else ""
        return f"SELECT {picked} FROM {query.stream}{order}{limit}"
    picked = ", ".join(cols) if cols else ", ".join(COMMON[1:])
    parts = [f"SELECT {lit(s)} AS stream, {picked} FROM {s}" for s in schemas.STREAMS]
    order = " ORDER BY ts" if not cols or "ts" in query.columns else ""
    return " UNION ALL ".join(parts) + order + limit


def connect(
    metadata_root: MetadataRoot, query: Query, scope: Scope | None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the stream views, limited to `metadata_root` and locked.
    OSError when an object-store root cannot be listed."""
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        if isinstance(metadata_root, Path):
            for stream in query.streams():
                files = partition_files(metadata_root, stream, query.start, query.end)
                con.execute(f"CREATE VIEW {stream} AS {view_sql(stream, files, query, scope)}")
            sqlguard.lock_down(con, metadata_root)
            return con
        found = partition_objects(metadata_root, query.streams(), query.start, query.end)
        for stream, objects in found.items():
            source: list[Path] | str = []
            if objects:
                source = register(con, stream, stream_dataset(metadata_root, stream, objects))
            con.execute(f"CREATE VIEW {stream} AS {view_sql(stream, source, query, scope)}")
        sqlguard.lock_down(con, None)
    except BaseException:
        con.close()
        raise
    return con


def run(metadata_root: MetadataRoot, query: Query, scope: Scope | None) -> pa.Table:
    """Run `query` (validated and authorised) over a local folder or an object-store root
    (search_remote.open_metadata_root) and return what the person may see.

    `SearchRefused` for SQL outside the sandbox; `SearchError` for SQL that fails otherwise.
    """
    final = _select(query, scope)
    if query.sql is not None:
        try:  # the SQL as given, and as it runs (wrapped for --limit)
            sqlguard.check_select(query.sql, query.streams())
            sqlguard.check_select(final, query.streams())
        except sqlguard.SqlRefused as exc:
            raise SearchRefused(str(exc), 2) from None
    why = query.person_level_because()
    if why and scope is None:  # authorise() requires a ref for these: never run them bare
        raise SearchRefused(f"this search can single out a person ({why}): it needs --ref", 2)
    con = None
    timer: threading.Timer | None = None
    try:
        if isinstance(metadata_root, Path):
            metadata_root = metadata_root.resolve()
        con = connect(metadata_root, query, scope)
        timer = threading.Timer(TIME_LIMIT_SECONDS, con.interrupt)
        timer.daemon = True
        timer.start()
        return con.sql(final).to_arrow_table()
    except duckdb.InterruptException:
        raise SearchFailed(
            f"search stopped after {TIME_LIMIT_SECONDS:g} s (the time limit); narrow it with "
            "--from/--to or --stream"
        ) from None
    except duckdb.OutOfMemoryException:
        raise SearchFailed(
            "search stopped: it needed more memory than searches may use (a quarter of the "
            "machine's); narrow it with --from/--to or --stream"
        ) from None
    except duckdb.PermissionException as exc:
        raise SearchRefused(f"--sql refused by the sandbox: {_message(exc, scope)}") from None
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        raise SearchFailed(f"search failed reading metadata: {_message(exc, scope)}") from None
    except duckdb.Error as exc:
        raise SearchError(f"search failed: {_message(exc, scope)}") from None
    except OSError as exc:  # listing an object store (pyarrow's S3 errors are OSErrors)
        where = "" if isinstance(metadata_root, Path) else f" at {metadata_root.uri}"
        raise SearchFailed(
            f"search failed reading metadata{where}: {_message(exc, scope)}"
        ) from None
    finally:
        if timer is not None:
            timer.cancel()
        if con is not None:
            con.close()


def _message(exc: BaseException, scope: Scope | None) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:400]
    return scope.pseud.scrub(text) if scope else text

"""`lbm search`: query the metadata streams (the logic is in appliance/evidence/search.py).

    lbm search --stream web --from 2026-03-01 --to 2026-03-02 --count-by host,date
    lbm search --stream web --principal p12345 --ref REF --reason TEXT [--csv|--json|--parquet F]
    lbm search --sql "SELECT host, count(*) FROM web GROUP BY host" --ref REF --reason TEXT

A search that can single out a person needs --ref and --reason and a login user mapped to an
investigator assigned to REF (or a custodian); others' identifiers are shown as pseudonyms.
Every search is audited (`search`: query, reason, row count, person-level, format), every
refusal too (`search_refused`); results never reach the audit log.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import pyarrow as pa
import pyarrow.parquet as pq

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, fail, pass_app
from appliance.evidence.search import (
    MIN_PERSONS,
    Query,
    SearchError,
    SearchFailed,
    SearchRefused,
    authorise,
    run,
    validate,
)
from appliance.evidence.search_remote import open_metadata_root
from store import StoreError
from store.audit import Action
from store.clock import parse_utc
from store.schemas import STREAMS


def _instant(value: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 instant with a zone, or a bare date (midnight UTC)."""
    if value is None:
        return None
    try:
        if len(value.strip()) == 10:
            day = dt.date.fromisoformat(value.strip())
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        return parse_utc(value)
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip()) if value else ()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, default=_cell, separators=(",", ":"))
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return _cell(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=10_000):
        yield from batch.to_pylist()


def write_table(table: pa.Table, out: Any) -> None:
    """Plain aligned text: a header, then one line per row."""
    names = table.column_names
    cells = [[_cell(r[n]) for n in names] for r in _rows(table)]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    for line in [names, *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
    out.write(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")


def write_csv(table: pa.Table, out: Any) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in _rows(table):
        writer.writerow([_cell(row[n]) for n in table.column_names])


def write_json_lines(table: pa.Table, out: Any) -> None:
    for row in _rows(table):
        out.write(json.dumps({k: _json_value(v) for k, v in row.items()}, default=str) + "\n")


def parquet_target(path: str, data_root: Path) -> tuple[Path, str | None]:
    """The resolved output file, and why it is refused (inside the data dir) if it is."""
    target = Path(path).absolute()
    parent = target.parent.resolve()
    final = parent / target.name
    root = data_root.resolve()
    if final == root or final.is_relative_to(root):
        return final, f"--parquet {path}: inside the data directory {root}; write it elsewhere"
    return final, None


def write_parquet(table: pa.Table, final: Path, data_root: Path) -> None:
    """Write `final` (0600) without ever replacing an existing file or leaving a partial one.

    The directory is opened once and everything happens relative to that descriptor, after
    checking where it really is: a directory swapped for a symlink into the data directory
    after `parquet_target` checked the path (a race) cannot receive the file."""
    root = data_root.resolve()
    dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    tmp = f".{final.name}.{secrets.token_hex(8)}.tmp"
    made = False
    try:
        real = Path(os.readlink(f"/proc/self/fd/{dfd}"))
        if real == root or real.is_relative_to(root):
            raise OSError(errno.EPERM, f"{real} is inside the data directory {root}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        made = True
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        # fails if `final` exists (even as a dangling symlink)
        os.link(tmp, final.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        if made:
            os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)


def _refused(app: App, query: Query, why: str, code: int) -> NoReturn:
    refs = (query.ref,) if query.ref else ()
    app.audit.append(Action.SEARCH_REFUSED, app.actor, refs=refs, why=why, query=query.describe())
    fail(why, code)


@click.command("search")
@click.option("--stream", type=click.Choice(list(STREAMS)), help="metadata stream")
@click.option("--principal", metavar="P", help="REF's subject, or a pseud:... shown earlier")
@click.option("--ip", metavar="ADDR", help="client or server IP address")
@click.option("--host", metavar="NAME", help="host name or a parent domain")
@click.option("--from", "start", metavar="TIME", help="from (ISO 8601 with zone, or a date)")
@click.option("--to", "end", metavar="TIME", help="until, exclusive")
@click.option("--ref", metavar="REF", help="authorisation the search is made under")
@click.option("--reason", metavar="TEXT", help="why (person-level searches)")
@click.option("--community-id", metavar="ID", help="Community ID v1 (joins streams, Zeek...)")
@click.option("--recorded-only", is_flag=True, help="only rows whose content REF recorded")
@click.option("--sql", metavar="SELECT", help="one SELECT over the views web, email, flow, dns")
@click.option("--columns", metavar="A,B", help="output columns (also date, hour)")
@click.option("--count-by", metavar="A,B", help="count rows per value of these columns")
@click.option("--limit", type=int, metavar="N", help="at most N rows")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout")
@click.option("--parquet", metavar="FILE", help="write a Parquet file (outside the data dir)")
@pass_app
def search(
    app: App,
    stream: str | None,
    principal: str | None,
    ip: str | None,
    host: str | None,
    start: str | None,
    end: str | None,
    ref: str | None,
    reason: str | None,
    community_id: str | None,
    recorded_only: bool,
    sql: str | None,
    columns: str | None,
    count_by: str | None,
    limit: int | None,
    as_csv: bool,
    as_json: bool,
    parquet: str | None,
) -> None:
    """Search the metadata streams; person-level searches need --ref and --reason."""
    app.require_initialised()
    if as_csv + as_json + (parquet is not None) > 1:
        fail("choose one of --csv, --json, --parquet", EXIT_USAGE)
    fmt = "csv" if as_csv else "json" if as_json else "parquet" if parquet else "table"
    query = Query(
        stream=stream,
        principal=principal,
        ip=ip,
        host=host,
        community_id=community_id,
        start=_instant(start, "--from"),
        end=_instant(end, "--to"),
        ref=ref,
        reason=reason,
        recorded_only=recorded_only,
        sql=sql,
        columns=_names(columns),
        count_by=_names(count_by),
        limit=limit,
    )
    try:
        validate(query)
    except SearchError as exc:
        fail(str(exc), EXIT_USAGE)
    target: Path | None = None
    if parquet is not None:
        target, why = parquet_target(parquet, app.paths.root)
        if why:
            _refused(app, query, why, EXIT_USAGE)
        if os.path.lexists(target):
            fail(f"--parquet {parquet}: exists; refusing to overwrite it", EXIT_USAGE)
    custodians = app.config["keys.custodians"]  # loads the config: `app.paths` gets [store]
    try:
        root = open_metadata_root(app.paths.store_settings)
    except StoreError as exc:
        fail(f"[store] metadata_root: {exc}")
    try:
        acting, scope = authorise(query, app.paths.registry, app.actor, custodians)
        table = run(root, query, scope)
    except SearchRefused as exc:
        _refused(app, query, str(exc), exc.code)
    except SearchError as exc:
        # The error text may quote values from the data: shown to the searcher, never audited.
        app.audit.append(
            Action.SEARCH_REFUSED,
            app.actor,
            refs=(query.ref,) if query.ref else (),
            why="the query failed to run",
            query=query.describe(),
        )
        fail(str(exc), EXIT_FAIL if isinstance(exc, SearchFailed) else EXIT_USAGE)
    extra = acting.as_audit() if acting else {}
    app.audit.append(
        Action.SEARCH,
        app.actor,
        refs=(query.ref,) if query.ref else (),
        query=query.describe(),
        reason=reason,
        rows=table.num_rows,
        person_level=query.person_level_because() is not None,
        format=fmt,
        **{k: v for k, v in extra.items() if k != "login"},
    )
    if scope is None and query.count_by:
        click.echo(
            f"note: without --ref, groups of fewer than {MIN_PERSONS} people are not shown",
            err=True,
        )
    if target is not None:
        try:
            write_parquet(table, target, app.paths.root)
        except OSError as exc:
            fail(f"--parquet {parquet}: {exc.strerror or exc}")
        click.echo(f"{table.num_rows} rows written to {target}", err=True)
    elif fmt == "csv":
        write_csv(table, sys.stdout)
    elif fmt == "json":
        write_json_lines(table, sys.stdout)
    else:
        write_table(table, sys.stdout)

"""`lbm identity import | show | resolve | status`: the identity map on the command line.

`import FILE` replaces the map with a feed (docs/identity-feed.md) and prints the counts, then
every bad row and conflict as `FILE:LINE: what is wrong` on stderr. Exit status: 0 when the file
loaded (even with bad rows or conflicts), 1 when nothing was loaded (unreadable file, bad CSV
header, malformed JSON array, no valid row), 2 for a usage error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.policy.identity import (
    FeedError,
    Lease,
    current_load,
    import_feed,
    load_identity,
    normalise_ip,
    stored_problems,
)
from store import sqlite
from store.clock import format_utc, parse_utc


@contextmanager
def _registry(app: App) -> Iterator[sqlite3.Connection]:
    app.require_initialised()
    conn = sqlite.connect(app.paths.registry)
    try:
        yield conn
    finally:
        conn.close()


@click.group("identity")
def identity() -> None:
    """The identity map: usernames, email addresses and IP leases of principals."""


@identity.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@pass_app
def import_cmd(app: App, file: Path, as_json: bool) -> None:
    """Replace the identity map with FILE (CSV, JSON array or JSON lines).

    Bad rows are listed on stderr with their line and left out; the valid rows are loaded, and
    the command then exits 1, so that a scheduled import of a partly broken feed is noticed."""
    with _registry(app) as conn:
        try:
            report = import_feed(conn, file, audit=app.audit, actor=app.actor)
        except FeedError as exc:
            fail(str(exc))
    for message in report.bad + report.conflicts:
        click.echo(message, err=True)
    text = (
        f"identity map loaded from {report.file}: {report.loaded} rows, "
        f"{report.principals} principals, {len(report.bad)} bad rows, "
        f"{len(report.conflicts)} conflicts (sha256 {report.sha256[:16]}...)"
    )
    emit(report.to_json(), as_json, text)
    if report.bad:
        raise SystemExit(EXIT_FAIL)


def _lease_json(lease: Lease, now: datetime) -> dict[str, Any]:
    return {
        "ip": lease.ip,
        "valid_from": format_utc(lease.valid_from),
        "valid_to": format_utc(lease.valid_to) if lease.valid_to else None,
        "state": lease.state(now),
        "line": lease.line,
    }


@identity.command("show")
@click.argument("principal")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@pass_app
def show(app: App, principal: str, as_json: bool) -> None:
    """A principal's usernames, addresses, and current, past and future IP leases."""
    with _registry(app) as conn:
        imap = load_identity(conn)
    info = imap.describe(principal)
    if info is None:
        fail(f"principal {principal!r} is not in the identity map")
    now = app.clock.now()
    leases = [_lease_json(lease, now) for lease in info["leases"]]
    source = imap.source or "?"
    data = {
        **info,
        "leases": leases,
        "source": imap.source,
        "conflicts": [c.describe(source) for c in info["conflicts"]],
    }
    lines = [f"principal {principal} (from {source})"]
    for key, label in (("usernames", "username"), ("emails", "email"), ("aliases", "alias")):
        for item in info[key]:
            flag = "  CONFLICT: resolves to nobody" if item["conflict"] else ""
            lines.append(f"  {label:<9} {item['value']}  (line {item['line']}){flag}")
    for lease in leases:
        until = lease["valid_to"] or "open"
        lines.append(
            f"  ip        {lease['ip']}  {lease['valid_from']} .. {until}  "
            f"[{lease['state']}] (line {lease['line']})"
        )
    lines.extend(f"  {message}" for message in data["conflicts"])
    emit(data, as_json, "\n".join(lines))


@identity.command("resolve")
@click.option("--ip", metavar="ADDRESS", help="an IPv4 or IPv6 address (needs --at)")
@click.option("--at", metavar="ISO8601", help="the instant, for --ip")
@click.option("--email", metavar="ADDRESS", help="an email address (case-insensitive)")
@click.option("--username", metavar="NAME", help="a proxy username (exact)")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@pass_app
def resolve(
    app: App, ip: str | None, at: str | None, email: str | None, username: str | None, as_json: bool
) -> None:
    """Which principal an identifier belongs to. Exit 1 if nobody (unknown or conflicting)."""
    given = [
        name
        for name, value in (("--ip", ip), ("--email", email), ("--username", username))
        if value is not None
    ]
    if len(given) != 1:
        fail("give exactly one of --ip, --email, --username", EXIT_USAGE)
    instant: datetime | None = None
    if ip is not None:
        if at is None:
            fail("--ip needs --at ISO8601 (leases are valid for a time window)", EXIT_USAGE)
        try:
            ip = normalise_ip(ip)
        except ValueError:
            fail(f"--ip {ip!r} is not an IP address", EXIT_USAGE)
    if at is not None:
        try:
            instant = parse_utc(at)
        except ValueError as exc:
            fail(f"--at: {exc}", EXIT_USAGE)
    with _registry(app) as conn:
        imap = load_identity(conn)
    principal = imap.resolve(username=username, email=email, ip=ip, at=instant)
    query = {
        "ip": ip,
        "email": email,
        "username": username,
        "at": format_utc(instant) if instant else None,
    }
    emit(
        {**{k: v for k, v in query.items() if v is not None}, "principal": principal},
        as_json,
        principal if principal is not None else "nobody",
    )
    if principal is None:
        raise SystemExit(1)


@identity.command("status")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@pass_app
def status(app: App, as_json: bool) -> None:
    """The current load: source file, hash, counts, and its bad rows and conflicts."""
    with _registry(app) as conn:
        load = current_load(conn)
        problems = stored_problems(conn)
    if load is None:
        emit({"loaded": False}, as_json, "no identity feed has been imported")
        return
    data = {
        **{
            k: load[k]
            for k in (
                "generation",
                "loaded_at",
                "source",
                "sha256",
                "format",
                "loaded",
                "bad",
                "conflicts",
            )
        },
        "problems": problems,
    }
    text = (
        f"generation {load['generation']} loaded {load['loaded_at']} from {load['source']} "
        f"({load['format']}, sha256 {load['sha256'][:16]}...): {load['loaded']} rows, "
        f"{load['bad']} bad, {load['conflicts']} conflicts"
    )
    emit(data, as_json, "\n".join([text, *problems]))

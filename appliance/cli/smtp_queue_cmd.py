"""`lbm smtp queue`: list, retry and remove spooled mail (click group `queue`, under `lbm smtp`).

The listing shows what an operator needs and nothing of the mail: id, age, attempts, next try,
the recipients' domains, size and state; never an address, a subject or a body.

While a relay runs it holds `spool/lock`; `retry` and `remove` then ask it through a file in
`spool/requests/` (it acts within a second, between attempts) and wait for the answer. With no
relay running they act on the spool directly. `remove` is audited (`spool_remove`: id, reason,
recipient count, size).
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, emit, fail, pass_app
from appliance.mail.spool import ID_RE, Envelope, Spool, SpoolError
from store.audit import Action
from store.fsutil import try_lock

REQUEST_WAIT_SECONDS = 15.0


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else "(local)"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _state(env: Envelope) -> str:
    if env.pending:
        return "deferred" if env.attempts else "queued"
    return "archive-wait" if not env.bounced or env.dsn_sent else "bouncing"


def describe(env: Envelope, now: float) -> dict[str, Any]:
    """One listing entry: counts and domains only."""
    next_try = None
    if env.pending:
        next_try = datetime.fromtimestamp(max(env.next_try, 0), UTC).isoformat()
        next_try = "now" if env.next_try <= now else next_try.replace("+00:00", "Z")
    return {
        "id": env.id,
        "age_seconds": round(max(0.0, now - env.received), 1),
        "attempts": env.attempts,
        "next_try": next_try,
        "domains": sorted({_domain(r) for r in (env.pending or env.rcpts)}),
        "recipients": len(env.rcpts),
        "pending": len(env.pending),
        "size": env.size,
        "state": _state(env),
        "dsn": env.is_dsn,
    }


def _entries(spool: Spool) -> tuple[list[Envelope], list[str]]:
    good, broken = [], []
    for spool_id in spool.ids():
        try:
            good.append(spool.read_envelope(spool_id))
        except SpoolError:
            broken.append(spool_id)
    return good, broken


def _relay_down(spool_dir: Path) -> contextlib.AbstractContextManager[bool]:
    """Yields True while holding spool/lock (no relay runs), False if a relay holds it."""
    return try_lock(spool_dir / "lock")


def _ask_relay(spool: Spool, name: str) -> bool:
    """Leave a request for the running relay; True once it took it."""
    spool.requests_dir.mkdir(mode=0o700, exist_ok=True)
    path = spool.requests_dir / name
    path.touch(mode=0o600)
    deadline = time.monotonic() + REQUEST_WAIT_SECONDS
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.1)
    path.unlink(missing_ok=True)
    return False


def _open_spool(app: App) -> Spool:
    app.require_initialised()
    return Spool(app.paths.spool)


def _check_id(spool_id: str) -> None:
    if not ID_RE.fullmatch(spool_id):
        fail(f"{spool_id!r} is not a spool id (8-40 characters [0-9a-z])", EXIT_USAGE)


@click.group("queue", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print the listing as JSON")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> None:
    """List spooled messages (id, age, attempts, next try, domains, size; never addresses)."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(App)
    assert app is not None
    spool = _open_spool(app)
    now = app.clock.now().timestamp()
    entries, broken = _entries(spool)
    listing = [describe(env, now) for env in entries]
    text_lines = [f"{len(listing)} spooled message(s)"]
    if listing:
        header = ("ID", "AGE", "TRIES", "NEXT TRY", "SIZE", "STATE", "DOMAINS")
        text_lines.append("{:<20} {:>7} {:>5} {:<21} {:>10} {:<12} {}".format(*header))
    for item in listing:
        text_lines.append(
            f"{item['id']:<20} {_age(item['age_seconds']):>7} {item['attempts']:>5} "
            f"{item['next_try'] or '-':<21} {item['size']:>10} {item['state']:<12} "
            f"{','.join(item['domains'])}"
        )
    if broken:
        text_lines.append(f"{len(broken)} unreadable entr(ies), quarantined at the next start")
    emit({"messages": listing, "unreadable": broken}, as_json, "\n".join(text_lines))


@queue.command("retry")
@click.argument("spool_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="retry every deferred message now")
@pass_app
def retry_cmd(app: App, spool_id: str | None, retry_all: bool) -> None:
    """Retry one deferred message (ID) or all of them (--all) now."""
    if bool(spool_id) == retry_all:
        fail("give a spool ID or --all (not both)", EXIT_USAGE)
    spool = _open_spool(app)
    if spool_id:
        _check_id(spool_id)
        if spool_id not in spool.ids():
            fail(f"no spooled message {spool_id}", EXIT_FAIL)
    targets = spool.ids() if retry_all else [spool_id or ""]
    with _relay_down(spool.directory) as down:
        if not down:
            if not _ask_relay(spool, f"retry-{'all' if retry_all else spool_id}"):
                fail("the running relay did not take the request (is it stuck?)", EXIT_FAIL)
            click.echo(f"lbm smtp queue: retry requested ({len(targets)} message(s))")
            return
        count = 0
        for target in targets:
            try:
                env = spool.read_envelope(target)
            except SpoolError:
                continue
            if env.pending:
                env.next_try = 0.0
                spool.update(env)
                count += 1
        click.echo(f"lbm smtp queue: {count} message(s) will be tried at the relay's next start")


@queue.command("remove")
@click.argument("spool_id")
@click.option("--reason", required=True, help="why (recorded in the audit log)")
@pass_app
def remove_cmd(app: App, spool_id: str, reason: str) -> None:
    """Remove a spooled message without delivering it (audited `spool_remove`)."""
    _check_id(spool_id)
    if not reason.strip():
        fail("--reason must say why", EXIT_USAGE)
    spool = _open_spool(app)
    try:
        env = spool.read_envelope(spool_id)
        recipients, size = len(env.rcpts), env.size
    except SpoolError:
        if not spool.env_path(spool_id).exists():
            fail(f"no spooled message {spool_id}", EXIT_FAIL)
        recipients, size = 0, 0  # unreadable: removed all the same
    with _relay_down(spool.directory) as down:
        if down:
            spool.remove(spool_id, sync=True)
        elif not _ask_relay(spool, f"remove-{spool_id}") or spool.env_path(spool_id).exists():
            fail("the running relay did not remove it (try again)", EXIT_FAIL)
    app.audit.append(
        Action.SPOOL_REMOVE,
        app.actor,
        spool_id=spool_id,
        reason=reason,
        recipients=recipients,
        size=size,
    )
    click.echo(f"lbm smtp queue: removed {spool_id}")

"""`lbm proxy run`: the web proxy daemon (embedded mitmproxy with the lbm addons).

It listens on `[web] listen_host`/`listen_port` (port 0: the bound port goes to
`run/proxy.port`), then writes `run/proxy.ready` (its pid; removed on exit) and tells systemd
READY=1 when NOTIFY_SOCKET is set. Policy snapshots reload within a second; a reload, and a tick
every second (expiry), closes open intercepted connections of subjects no longer covered.
Archive segments are closed on time by `archive.tick()` every few seconds.

SIGTERM/SIGINT: the listeners close first (the port refuses connections from then on), open
connections get DRAIN_SECONDS to finish and are then closed, their rows written; the metadata
writer is flushed and closed (`aclose`), the archive's segments are sealed, and the process
exits 0. The daemon prints only its own lines (listening, stopped); mitmproxy's log records pass
through `addons.logfilter`, which never lets traffic bytes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.cli import daemonlog
from appliance.cli.app import EXIT_USAGE, App, fail, pass_app, run_guarded
from appliance.cli.daemon_metrics import (
    ConnectionTally,
    RowTally,
    add_policy,
    add_writer,
    proxy_counters,
)
from appliance.cli.reload import PROXY_SECTIONS, Reloader
from appliance.config import ConfigError
from appliance.counters import StatusWriter
from store.archive import Archive
from store.clock import Clock, parse_utc
from store.fsutil import atomic_write
from store.metadata import MetadataWriter
from store.readiness import announce_ready

WRITER = "proxy"
DRAIN_SECONDS = 5.0  # open connections get this long to finish after SIGTERM
TICK_SECONDS = 1.0
FAKE_NOW_FILE = "fake-now"  # run/fake-now: a test moves a running daemon's fake clock


@click.group("proxy")
def proxy() -> None:
    """The intercepting web proxy."""


def _register_web_auth_commands() -> None:
    try:
        from appliance.cli.proxy_ca_cmd import ca  # web-auth: `lbm proxy ca`
    except ModuleNotFoundError as exc:
        if exc.name != "appliance.cli.proxy_ca_cmd":
            raise
        return
    proxy.add_command(ca)


def daemon_clock(app: App) -> Clock:
    """The appliance clock; with `[testing] fake_clock`, `run/fake-now` (if present) moves it
    while the daemon runs (tests of expiry), else LBM_FAKE_NOW, else real time."""
    if not app.config.fake_clock:
        return app.clock
    path = app.paths.run / FAKE_NOW_FILE
    base = app.clock

    def source() -> Any:
        try:
            text = path.read_text().strip()
        except OSError:
            return base.now()
        try:
            return parse_utc(text)
        except ValueError:
            return base.now()

    return Clock(source=source)


def _ca_dir(app: App) -> Path:
    """The interception CA's directory (mitmproxy confdir layout), created if absent."""
    from addons.ca import ensure_ca  # lazily, like every addon: `lbm` starts without mitmproxy

    return ensure_ca(app.paths.keys)


def _testing_hosts(app: App) -> dict[str, str]:
    from addons.testing_hosts import parse_hosts

    items = app.config["testing.hosts"]
    if not items:
        return {}
    if not app.config.fake_clock:
        click.echo(
            "lbm proxy: note: [testing] hosts ignored (only honoured with fake_clock = true)",
            err=True,
        )
        return {}
    try:
        return parse_hosts(items)
    except ValueError as exc:
        raise ConfigError(f"{app.config_path}: [testing] hosts: {exc}") from None


def _identity_addon(app: App, source: Any, clock: Clock) -> Any:
    from addons.identity import Identity  # web-auth
    from appliance.policy.users import UsersFile, UsersSource, users_file_path

    cfg = app.config
    auth = bool(cfg["web.auth"])
    users: Callable[[], UsersFile | None] | None = None
    if auth:  # the users file, reloaded on change; a bad edit keeps the last good file
        path = users_file_path(str(cfg["identity.users_file"]), app.paths.root)

        def on_error(msg: str) -> None:
            daemonlog.log("proxy", "users_file_error", "warning", error=msg)

        users = UsersSource(path, on_error=on_error).current
    return Identity(source.current, clock, cfg["web.mode"], users, auth=auth)


def _notice_addon(app: App) -> Any:
    try:
        from addons.notice import Notice  # web-auth
    except ModuleNotFoundError as exc:
        if exc.name != "addons.notice":
            raise
        return None
    cfg = app.config
    return Notice(cfg["notice.host"], cfg["notice.text"], cfg["notice.version"])


def _archiver_addon(app: App, archive: Archive, clock: Clock) -> Any:
    try:
        from addons.archiver import Archiver  # web-content
    except ModuleNotFoundError as exc:
        if exc.name != "addons.archiver":
            raise
        return None
    return Archiver(archive, app.audit, app.actor, clock)


def _build_chain(app: App, clock: Clock, source: Any, writer: Any, archive: Archive) -> Any:
    """Our addons in order, and the named ones the daemon adjusts (SIGHUP) or reads (metrics)."""
    from addons.decision import Decision
    from addons.limits import Limits
    from addons.metadata import Metadata
    from addons.pinned import PinnedClients
    from addons.testing_hosts import TestingHosts

    cfg = app.config
    notice_host = cfg.values.get("notice.host")
    decision = Decision(
        source.current,
        clock,
        notice_host=notice_host,
        pinned=PinnedClients(cfg["web.pinned_client_window_seconds"]),
    )
    named = {
        "limits": Limits(
            max_connections_per_client=cfg["web.max_connections_per_client"],
            header_timeout=cfg["web.header_timeout_seconds"],
        ),
        "identity": _identity_addon(app, source, clock),
        "notice": _notice_addon(app),
        "decision": decision,
        "archiver": _archiver_addon(app, archive, clock),
        "metadata": Metadata(writer, clock, notice_version=str(cfg["notice.version"])),
        "tally": ConnectionTally(),
    }
    chain: list[Any] = [
        named["tally"],
        named["limits"],
        TestingHosts(_testing_hosts(app)),
        *(named[k] for k in ("identity", "notice", "decision", "archiver", "metadata")),
    ]
    return [a for a in chain if a is not None], named


def _apply_live(named: dict[str, Any]) -> Any:
    """The options `lbm proxy run` changes on SIGHUP without a restart."""
    from addons import limits

    def apply(cfg: Any, changed: list[str]) -> list[str]:
        done = []
        for key in changed:
            value = cfg[key]
            if key == "web.max_header_bytes":
                limits.install_header_limit(value)
            elif key == "web.idle_timeout_seconds":
                limits.set_idle_timeout(value)
            elif key == "web.max_connections_per_client":
                named["limits"].max_per_client = value
            elif key == "web.header_timeout_seconds":
                named["limits"].header_timeout = value
            elif key in ("notice.text", "notice.version") and named["notice"] is not None:
                from addons.notice import render_page

                notice = named["notice"]
                notice.text, notice.version = cfg["notice.text"], str(cfg["notice.version"])
                notice.page = render_page(notice.text, notice.version)
                named["metadata"].notice_version = str(cfg["notice.version"])
            else:
                continue
            done.append(key)
        return done

    return apply


def _reload(reloader: Reloader) -> None:
    try:
        reloader.reload()
    except Exception as exc:  # an audit write that fails must not stop the proxy
        daemonlog.log("proxy", "config_reload_failed", "error", error=type(exc).__name__)


def _users_check(identity: Any) -> Callable[[], object]:
    """Re-read the users file now if it changed (SIGHUP)."""
    users = getattr(identity, "users", None) if identity is not None else None
    return users if callable(users) else (lambda: None)


async def serve(app: App) -> dict[str, Any]:
    """Run the proxy until SIGTERM/SIGINT; returns counts for the exit summary."""
    from addons import limits, logfilter
    from addons.master import ProxyRuntime, ProxySettings, trust_bundle
    from appliance.cli.auth_cmd import snapshot_source

    cfg = app.config
    # mitmproxy's records, reduced to fixed texts by the privacy filter, as JSON lines on stdout
    logfilter.install(sys.stdout).setFormatter(daemonlog.JsonFormatter("proxy"))
    limits.install_header_limit(cfg["web.max_header_bytes"])
    limits.set_idle_timeout(cfg["web.idle_timeout_seconds"])
    run_dir = app.paths.run
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("proxy.port", "proxy.ready"):
        (run_dir / name).unlink(missing_ok=True)
    trust: Path | None = None
    if cfg["web.upstream_ca_file"]:
        extra = Path(cfg["web.upstream_ca_file"])
        if not extra.is_absolute():
            extra = app.paths.root / extra
        if not extra.is_file():
            raise ConfigError(f"{app.config_path}: [web] upstream_ca_file: {extra} is not a file")
        trust = trust_bundle(extra, run_dir / "proxy-upstream-trust.pem")
    clock = daemon_clock(app)
    source = snapshot_source(app)
    archive = Archive(
        app.paths, app.gateway_key, clock, audit=app.audit, actor=app.actor,
        segment_max_bytes=cfg["archive.segment_max_bytes"],
    )  # fmt: skip
    archive.recover()
    writer = MetadataWriter(
        "web", WRITER, paths=app.paths, gateway=cfg.gateway_id, clock=clock,
        audit=app.audit, actor=app.actor,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hup = asyncio.Event()
    status: StatusWriter | None = None

    def on_signal(signum: int, frame: object) -> None:
        # a Python-level handler (not loop.add_signal_handler): it outlives the loop, so a
        # repeated SIGTERM during the orderly stop is absorbed instead of killing us
        with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting anyway
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def on_hup(signum: int, frame: object) -> None:  # reload in the loop, not in the handler
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(hup.set)

    signal.signal(signal.SIGHUP, on_hup)
    ready = run_dir / "proxy.ready"
    runtime: ProxyRuntime | None = None
    try:
        rows = RowTally(writer)
        ours, named = _build_chain(app, clock, source, rows, archive)
        decision = named["decision"]
        settings = ProxySettings(
            mode=cfg["web.mode"],
            listen_host=cfg["web.listen_host"],
            listen_port=cfg["web.listen_port"],
            confdir=_ca_dir(app),
            trust_file=trust,
        )
        runtime = ProxyRuntime(settings, ours)
        addrs = await runtime.start()
        live = runtime
        counters = proxy_counters(
            mode=cfg["web.mode"], tally=named["tally"], rows=rows, identity=named["identity"],
            archiver=named["archiver"], open_connections=lambda: live.open_connections(),
        )  # fmt: skip
        add_writer(counters, writer)
        add_policy(counters, source)
        archiver = named["archiver"]
        errors = {
            "archive_gap": lambda: archiver.counts.gaps if archiver is not None else 0,
            "metadata_refused": lambda: writer.gaps,
            "policy_stale": lambda: int(source.stale),
        }
        status = StatusWriter(run_dir, "proxy", counters, errors=errors)
        status.port = addrs[0][1]
        reloader = Reloader(
            app, "proxy", _apply_live(named), sections=PROXY_SECTIONS,
            refresh=[lambda: source.refresh(force=True), _users_check(named["identity"])],
            log=lambda event, fields: daemonlog.log("proxy", event, **fields),
        )  # fmt: skip

        def on_reload(snapshot: Any) -> None:  # the snapshot thread: hop to the loop
            loop.call_soon_threadsafe(decision.on_snapshot, snapshot)

        source.add_listener(on_reload)

        atomic_write(run_dir / "proxy.port", f"{addrs[0][1]}\n".encode(), mode=0o600)
        announce_ready(run_dir, "proxy")
        status.tick()
        daemonlog.log(
            "proxy", "listening", host=addrs[0][0], port=addrs[0][1], mode=cfg["web.mode"]
        )
        last_archive_tick = loop.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            decision.on_snapshot(source.current())  # expiry moves with the clock
            if hup.is_set():  # in the loop: no connection is dropped, no addon races
                hup.clear()
                _reload(reloader)
            status.tick()
            if loop.time() - last_archive_tick >= 5.0:
                await asyncio.to_thread(archive.tick)
                last_archive_tick = loop.time()
        # orderly stop: refuse new connections, let open ones finish, then close them
        await runtime.stop_listening()
        deadline = loop.time() + DRAIN_SECONDS
        while runtime.open_connections() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        runtime.close_connections()
        deadline = loop.time() + 5.0
        while runtime.open_connections() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await runtime.stop()
        runtime = None
    finally:
        if runtime is not None:
            with contextlib.suppress(Exception):
                await runtime.stop()
        ready.unlink(missing_ok=True)
        (run_dir / "proxy.port").unlink(missing_ok=True)
        await writer.aclose()
        await asyncio.to_thread(archive.close)
        source.stop()
        if status is not None:
            status.close()
    daemonlog.log("proxy", "stopped", metadata_rows_refused=writer.gaps)
    return {"rows_refused": writer.gaps}


@proxy.command("run")
@pass_app
def run_cmd(app: App) -> None:
    """Run the web proxy until SIGTERM/SIGINT (writer `proxy`)."""
    app.require_initialised()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() takes it (reload)
    _ = app.config  # a bad configuration stops here (exit 2)
    if app.config["web.mode"] == "transparent" and app.config["web.auth"]:
        fail(f"{app.config_path}: [web] auth needs mode = explicit", EXIT_USAGE)
    run_guarded(lambda: asyncio.run(serve(app)))
    # Everything is flushed and closed. Leave now rather than through the interpreter's slow
    # finalization (about 0.3 s of module teardown here), during which the default signal
    # dispositions are back: a SIGTERM repeated by a supervisor then would turn exit 0 into
    # "killed by SIGTERM" (seen in test_signal_stops_with_exit_zero).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_register_web_auth_commands()

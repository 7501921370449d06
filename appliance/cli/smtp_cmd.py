"""`lbm smtp run`: the SMTP relay daemon (writer `smtp`), and the `lbm smtp queue` commands.

It wires the pieces of `appliance.mail` to this data directory: the aiosmtpd server (engine +
handler) with the SMTP certificate for STARTTLS, the durable spool and the delivery worker, the
policy snapshot source, `MetadataWriter("email", "smtp")` (rows only through `append_nowait`),
the archive (ticked every second so segments close at 60 s) and the audit log. It runs until
SIGTERM or SIGINT, then stops accepting, lets sessions in DATA finish (the others get `421`),
stops the worker, flushes the metadata, closes the archive's segments and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli import daemonlog
from appliance.cli.app import EXIT_FAIL, App, emit, fail, pass_app, run_guarded
from appliance.cli.daemon_metrics import add_policy, add_writer, relay_counters
from appliance.cli.reload import RELAY_SECTIONS, Reloader
from appliance.counters import StatusWriter
from appliance.mail.auth import SmtpAuthenticator, Users
from appliance.mail.delivery import DeliveryConfigError
from appliance.mail.engine import RelaySMTP, Sessions, banner_lines
from appliance.mail.handler import Audit, RelayHandler, RelaySettings, parse_networks
from appliance.mail.refusals import Counters
from appliance.mail.service import serve
from appliance.mail.spool import Envelope, Spool, SpoolError
from appliance.mail.tls import TlsError, ensure_smtp_cert, server_context
from store.archive import Archive
from store.audit import Action
from store.metadata import MetadataWriter


@click.group("smtp")
def smtp() -> None:
    """The SMTP relay: run it, inspect and manage its queue."""


def _optional(module: str) -> Any:
    """A mail module another helper builds, or None while it is not part of this build."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def users_source(app: App) -> Callable[[], Users | None]:
    """The current users file (`[identity] users_file`), or a source of None (AUTH refused)."""
    name = str(app.config.values.get("identity.users_file") or "")
    users = _optional("appliance.policy.users")
    if not name or users is None:
        return lambda: None
    path = Path(name)
    source = users.UsersSource(path if path.is_absolute() else app.paths.root / path)
    current: Callable[[], Users | None] = source.current
    return current


class Relay:
    """Everything one `lbm smtp run` holds, built from the App."""

    def __init__(self, app: App) -> None:
        from appliance.cli.auth_cmd import snapshot_source

        app.require_initialised()
        cfg = app.config
        self.app = app
        self.gateway = cfg.gateway_id
        self.counters = Counters()
        cert, key, _ = ensure_smtp_cert(app.paths.keys, cfg)
        self.tls = server_context(cert, key)
        self.spool = Spool(app.paths.spool, clock=app.clock, audit=app.audit, actor=app.actor)
        self.spool.lock()  # a second relay on this data dir stops here
        self.source = snapshot_source(app)
        self.archive = Archive(
            app.paths, app.gateway_key, app.clock, audit=app.audit, actor=app.actor,
            segment_max_bytes=cfg["archive.segment_max_bytes"],
        )  # fmt: skip
        self.archive.recover()
        self.writer = MetadataWriter(
            "email",
            "smtp",
            paths=app.paths,
            gateway=self.gateway,
            clock=app.clock,
            audit=app.audit,
            actor=app.actor,
        )
        self.worker = self._worker()
        rows = _optional("appliance.mail.rows")
        queued = None
        if rows is not None:
            email_rows = rows.email_rows

            def queued(env: Envelope, at: datetime) -> list[dict[str, Any]]:
                return list(
                    email_rows(
                        env, "queued", rcpts=env.rcpts, gateway=self.gateway, ts=at,
                        smtp_code=250, smtp_status="2.0.0", attempt=0,
                    )
                )  # fmt: skip

        self.handler = RelayHandler(
            RelaySettings(
                gateway=self.gateway,
                internal_domains=list(cfg["smtp.internal_domains"]),
                allowed_clients=parse_networks(cfg["smtp.allowed_clients"]),
                max_recipients=int(cfg["smtp.max_recipients"]),
                notice_version=str(cfg["notice.version"]),
            ),
            snapshot=self.source.current,
            spool=self.spool,
            clock=app.clock,
            counters=self.counters,
            audit=Audit(app.audit, app.actor),
            archive=self.archive,
            queued_rows=queued,
            append_row=self.writer.append_nowait,
            wake=self.worker.wake if self.worker is not None else None,
        )
        self.sessions = Sessions(int(cfg["smtp.max_connections"]), self.counters)
        users = users_source(app)
        self.authenticator = SmtpAuthenticator(users, self._principal_of, self.counters)
        self.banner = banner_lines(self.gateway, cfg["notice.text"], cfg["notice.version"])
        self.status = self._status()
        self.reloader = Reloader(
            app, "smtp", self._apply_live, sections=RELAY_SECTIONS,
            refresh=[lambda: self.source.refresh(force=True), users],
            log=lambda event, fields: daemonlog.log("smtp", event, **fields),
        )  # fmt: skip

    def _status(self) -> StatusWriter:
        counters = relay_counters(
            events=self.counters.snapshot, delivery=self.worker, spool_dir=self.spool.directory
        )
        add_writer(counters, self.writer)
        add_policy(counters, self.source)
        errors = {
            "archive_gap": lambda: self.counters.get("archive_gap"),
            "metadata_refused": lambda: self.writer.gaps,
            "delivery_failed": lambda: self._failures(),
            "policy_stale": lambda: int(self.source.stale),
        }
        return StatusWriter(self.app.paths.run, "smtp", counters, errors=errors)

    def _failures(self) -> int:
        if self.worker is None:
            return 0
        return int(self.worker.counts["bounced"] + self.worker.counts["dsn_dropped"])

    def _apply_live(self, cfg: Any, changed: list[str]) -> list[str]:
        """The options the relay changes on SIGHUP; sessions already open keep theirs."""
        live = {
            "smtp.internal_domains", "smtp.allowed_clients", "smtp.max_recipients",
            "smtp.max_connections", "notice.text", "notice.version",
        }  # fmt: skip
        done = [k for k in changed if k in live]
        if done:
            self.handler.settings = replace(
                self.handler.settings,
                internal_domains=list(cfg["smtp.internal_domains"]),
                allowed_clients=parse_networks(cfg["smtp.allowed_clients"]),
                max_recipients=int(cfg["smtp.max_recipients"]),
                notice_version=str(cfg["notice.version"]),
            )
            self.sessions.max_connections = int(cfg["smtp.max_connections"])
            self.banner = banner_lines(self.gateway, cfg["notice.text"], cfg["notice.version"])
        return done

    def reload(self) -> None:
        try:
            self.reloader.reload()
        except Exception as exc:  # an audit write that fails must not stop the relay
            daemonlog.log("smtp", "config_reload_failed", "error", error=type(exc).__name__)

    def tick(self) -> None:
        if self.status.port is None:
            with contextlib.suppress(OSError, ValueError):
                self.status.port = int((self.app.paths.run / "smtp.port").read_text())
                daemonlog.log("smtp", "listening", port=self.status.port)
        self.status.tick()
        self.archive.tick()

    def _worker(self) -> Any:
        delivery = _optional("appliance.mail.delivery")
        if delivery is None:
            click.echo(
                "lbm smtp: note: no delivery worker in this build: mail stays spooled", err=True
            )
            return None
        return delivery.DeliveryWorker(
            self.spool,
            self.app.config,
            rows=self.writer.append_nowait,
            archive_closed=self.archive.segment_closed,
            audit=self.app.audit,
            actor=self.app.actor,
            clock=self.app.clock,
            gateway=self.gateway,
            flush_rows=self.writer.aflush,  # marks queued rows durable (see delivery.py)
        )

    def _principal_of(self, user: str) -> str | None:
        try:
            return self.source.current().identity.resolve(username=user)
        except ValueError:
            return None

    def factory(self) -> RelaySMTP:
        cfg = self.app.config
        return RelaySMTP(
            self.handler,
            sessions=self.sessions,
            authenticator=self.authenticator,
            banner=self.banner,
            hostname=self.gateway,
            ident="lbm-gateway",
            tls_context=self.tls,
            require_starttls=False,  # relaying from allowed clients may be plain
            auth_require_tls=True,  # always: AUTH is never offered before STARTTLS
            enable_SMTPUTF8=True,
            data_size_limit=int(cfg["smtp.max_message_bytes"]),
            timeout=300,
        )

    async def start(self) -> None:
        report = await asyncio.to_thread(self.spool.load)  # quarantines broken entries
        del report
        if self.worker is not None:
            self.worker.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        self.status.tick()

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        try:
            if self.worker is not None:
                await self.worker.stop()
                # seal the segments now (no session is left to write one), so the subjects'
                # delivered messages that waited for their segment leave the spool before exit
                await asyncio.to_thread(self.archive.close)
                await self.worker.remove_sealed()
            await self.spool.close()
        finally:
            try:
                await self.writer.aclose()
            finally:
                await asyncio.to_thread(self.archive.close)
                self.source.stop()
                self.spool.unlock()
                self.status.close()

    async def run(self) -> dict[str, Any]:
        cfg = self.app.config
        self.app.audit.append(Action.DAEMON_START, self.app.actor, daemon="smtp")
        port = await serve(
            self.factory,
            self.sessions,
            host=str(cfg["smtp.listen_host"]),
            port=int(cfg["smtp.listen_port"]),
            run_dir=self.app.paths.run,
            on_start=self.start,
            on_tick=self.tick,
            on_stop=self.stop,
        )
        self.app.audit.append(Action.DAEMON_STOP, self.app.actor, daemon="smtp")
        return {"port": port, "counters": self.counters.snapshot()}


@smtp.command("run")
@click.option("--json", "as_json", is_flag=True, help="print the final counters as JSON")
@pass_app
def run_cmd(app: App, as_json: bool) -> None:
    """Run the SMTP relay until SIGTERM/SIGINT (port 0: the real port goes to run/smtp.port)."""

    def run() -> dict[str, Any]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop takes it (reload)
        relay = Relay(app)
        return asyncio.run(relay.run())

    try:
        result = run_guarded(run)
    except (TlsError, SpoolError, DeliveryConfigError) as exc:
        fail(str(exc), EXIT_FAIL)
    except OSError as exc:  # the port is taken, the address is not local
        fail(f"smtp: cannot listen: {exc.strerror or exc}", EXIT_FAIL)
    if as_json:
        emit(result, as_json)
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result["counters"].items()) or "none"
        daemonlog.log(
            "smtp", "stopped", port=result["port"], counters=result["counters"], counts=counts
        )


_queue = _optional("appliance.cli.smtp_queue_cmd")
if _queue is not None:  # mail-delivery's `lbm smtp queue`
    smtp.add_command(_queue.queue)

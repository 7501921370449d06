"""`lbm housekeeping run`: the always-on maintenance daemon.

Each pass (every `[housekeeping] interval_seconds`): records in the audit log every authorisation
that has expired since the last pass (urgent grants not ratified within 72 hours included),
re-imports the identity feed when the file changed, and prints review-due and expiry warnings.
It holds no content and opens no archive.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from appliance.cli.app import App, pass_app
from appliance.policy.expiry import record_expiries
from appliance.policy.identity import import_if_changed
from store import sqlite
from store.audit import Action
from store.readiness import announce_ready


class Housekeeper:
    def __init__(self, app: App) -> None:
        self.app = app
        self.feed_state: dict[str, Any] = {}

    def _log(self, message: str) -> None:
        click.echo(f"housekeeping: {message}", err=True)

    def expiries(self) -> list[str]:
        conn = sqlite.connect(self.app.paths.registry)
        try:
            refs = record_expiries(conn, self.app.audit, self.app.actor, self.app.clock.now())
        finally:
            conn.close()
        for ref in refs:
            self._log(f"authorisation {ref} has expired; recording stopped")
        return refs

    def identity_feed(self) -> dict[str, Any] | None:
        path = self.app.config.identity_feed(self.app.paths.root)
        if path is None:
            return None
        try:
            result: dict[str, Any] | None = import_if_changed(
                self.app.paths, path, self.feed_state, audit=self.app.audit, actor=self.app.actor
            )
        except Exception as exc:  # process boundary: a bad feed must not stop housekeeping
            self._log(f"identity feed {path}: {exc}")
            return None
        if result:
            self._log(f"identity feed {path} re-imported: {result}")
        return result

    def one_pass(self) -> dict[str, Any]:
        return {"expired": self.expiries(), "identity": self.identity_feed()}


@click.group("housekeeping")
def housekeeping() -> None:
    """The maintenance daemon (expiries, identity feed, warnings)."""


@housekeeping.command("run")
@click.option("--once", is_flag=True, help="do one pass and exit")
@pass_app
def run(app: App, once: bool) -> None:
    """Run housekeeping passes until SIGTERM/SIGINT."""
    app.require_initialised()
    keeper = Housekeeper(app)
    if once:
        click.echo(keeper.one_pass())
        return
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.audit.append(Action.DAEMON_START, app.actor, daemon="housekeeping")
    app.paths.run.mkdir(parents=True, exist_ok=True)
    ready = announce_ready(app.paths.run, "housekeeping")  # run/housekeeping.ready + READY=1
    interval = float(app.config["housekeeping.interval_seconds"])
    try:
        while not stop.is_set():
            keeper.one_pass()
            stop.wait(interval)
    finally:
        ready.unlink(missing_ok=True)
        app.audit.append(Action.DAEMON_STOP, app.actor, daemon="housekeeping")
    sys.exit(0)

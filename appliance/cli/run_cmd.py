"""`lbm run`: supervise every daemon the configuration enables, in the foreground."""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from appliance.cli.app import App, fail, pass_app
from appliance.cli.supervisor import (
    AlreadyRunning,
    Daemon,
    Supervisor,
    acquire_run_lock,
    lbm_argv,
)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def enabled_daemons(app: App) -> tuple[list[Daemon], list[str]]:
    """The daemons to run, and notes on enabled ones this build cannot run yet."""
    cfg = app.config
    config = app.config_path if app.config_explicit else None
    daemons: list[Daemon] = []
    notes: list[str] = []

    def add(name: str, module: str, *args: str) -> None:
        if _available(module):
            daemons.append(Daemon(name, lbm_argv(app.paths.root, config, *args)))
        else:
            notes.append(f"{name}: enabled in the configuration but not part of this build")

    if cfg["housekeeping.enabled"]:
        add("housekeeping", "appliance.cli.housekeeping_cmd", "housekeeping", "run")
    if cfg["web.enabled"]:
        add("proxy", "appliance.cli.proxy_cmd", "proxy", "run")
    if cfg["smtp.enabled"]:
        add("smtp", "appliance.cli.smtp_cmd", "smtp", "run")
    for interface in cfg["capture.interfaces"]:
        add(
            f"capture-{interface}",
            "appliance.cli.capture_cmd",
            "capture",
            "live",
            "--interface",
            interface,
        )
    return daemons, notes


@click.command("run")
@pass_app
def run(app: App) -> None:
    """Start every enabled daemon; Ctrl-C or SIGTERM stops them all."""
    app.require_initialised()
    _ = app.config  # a bad configuration stops here with exit 2
    daemons, notes = enabled_daemons(app)
    for note in notes:
        click.echo(f"lbm run: note: {note}", err=True)
    if not daemons:
        fail("no daemon is enabled in the configuration", 2)

    def log(message: str) -> None:
        click.echo(f"lbm run: {message}", err=True)
        sys.stderr.flush()

    app.paths.run.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_run_lock(app.paths.run / "lbm-run.lock")
    except AlreadyRunning as exc:
        fail(f"{app.paths.root}: lbm run is {exc}", 1)
    supervisor = Supervisor(daemons, log)
    try:
        code = supervisor.run(app.paths.run / "lbm-run.pid")
    finally:
        os.close(lock)
    sys.exit(code)

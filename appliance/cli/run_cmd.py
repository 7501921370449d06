"""`lbm run`: supervise every daemon the configuration enables, in the foreground."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

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
        if cfg["web.mode"] == "transparent" and cfg["web.transparent_scope"] == "subjects":
            add("scope-sync", "appliance.cli.gateway_cmd", "gateway", "scope-sync")
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


READY_WAIT = 15.0  # seconds: print the summary then even if a daemon is not ready yet


def summary(app: App, daemons: list[Daemon], waited: float) -> str:
    """What is running, where it listens, and the commands to try next."""
    run_dir = app.paths.run
    gateway = app.config["gateway.id"]
    cli = "lbm" if shutil.which("lbm") else str(Path(sys.executable).parent / "lbm")
    data = f" --data-dir {app.paths.root}" if app.paths.root != Path("lbm-data").absolute() else ""
    lines = [f"running on {app.paths.root} (gateway {gateway}):"]
    for daemon in daemons:
        pid = daemon.proc.pid if daemon.proc is not None else "-"
        state = "ready" if (run_dir / f"{daemon.name}.ready").exists() else "starting"
        port_file = run_dir / f"{daemon.name}.port"
        where = f"  port {port_file.read_text().strip()}" if port_file.exists() else ""
        lines.append(f"  {daemon.name:<16} pid {pid:<8} {state}{where}")
    if waited >= READY_WAIT:
        lines.append(f"  (not every daemon was ready after {READY_WAIT:.0f} s: see the log above)")
    nexts = [
        ("status", "daemons, ports, audit witness, fake clock"),
        ("audit verify", "check the signed, hash-chained audit log"),
        ("officer list", "the officer register"),
        ("auth list", "authorisations in force"),
    ]
    width = max(len(f"{cli}{data} {cmd}") for cmd, _ in nexts)
    lines.append("next:")
    lines += [f"  {f'{cli}{data} {cmd}':<{width}}  {what}" for cmd, what in nexts]
    lines.append("  Ctrl-C stops every daemon")
    return "\n".join(lines)


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
    started = time.monotonic()

    def announce(running: list[Daemon]) -> bool:
        waited = time.monotonic() - started
        ready = all((app.paths.run / f"{d.name}.ready").exists() for d in running)
        if not ready and waited < READY_WAIT:
            return False
        click.echo(summary(app, running, waited))
        sys.stdout.flush()
        return True

    try:
        code = supervisor.run(app.paths.run / "lbm-run.pid", on_ready=announce)
    finally:
        os.close(lock)
    sys.exit(code)

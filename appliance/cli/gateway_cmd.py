"""`lbm gateway`: the network side of transparent interception.

- `lbm gateway rules [--apply|--remove] [--json]` prints (loads, deletes) the nftables table
  `inet lbm` for `[gateway] inside_interface` and `inside_networks` (see `gateway_rules`).
  Applying and removing are audited (`gateway_rules_apply`, `gateway_rules_remove`) with the
  interface, networks, port, scope and the ruleset's SHA-256, never a subject's address.
- `lbm gateway scope-sync` is the daemon `lbm run` starts with `[web] mode = "transparent"` and
  `transparent_scope = "subjects"`: it keeps the subject sets in step (see `gateway_scope`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from appliance.cli import gateway_rules, gateway_scope
from appliance.cli.app import EXIT_USAGE, App, emit, fail, pass_app
from store import sqlite
from store.audit import Action
from store.readiness import announce_ready, notify_systemd


def _proxy_port(app: App) -> int:
    port = int(app.config["web.listen_port"])
    if port:
        return port
    port_file = app.paths.run / "proxy.port"
    try:
        return int(port_file.read_text().strip())
    except (OSError, ValueError):
        fail(
            f"{app.config_path}: [web] listen_port is 0 and {port_file} does not hold the "
            "running proxy's port: set a fixed listen_port for transparent mode",
            EXIT_USAGE,
        )


def spec_from_config(app: App) -> gateway_rules.RuleSpec:
    """The rule specification the configuration asks for; exit 2 naming the key otherwise."""
    cfg = app.config
    where = app.config_path
    if cfg["web.mode"] != "transparent":
        fail(
            f"{where}: [web] mode is {cfg['web.mode']!r}; the rules need 'transparent'", EXIT_USAGE
        )
    if not cfg["gateway.inside_interface"]:
        fail(f"{where}: [gateway] inside_interface is not set", EXIT_USAGE)
    host = str(cfg["web.listen_host"])
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        fail(
            f"{where}: [web] listen_host {host} is loopback; redirected connections arrive on the "
            "inside interface's address: listen on 0.0.0.0 (or ::) or that address",
            EXIT_USAGE,
        )
    try:
        return gateway_rules.RuleSpec(
            interface=str(cfg["gateway.inside_interface"]),
            networks=tuple(cfg["gateway.inside_networks"]),
            port=_proxy_port(app),
            scope=str(cfg["web.transparent_scope"]),
        )
    except gateway_rules.RulesError as exc:
        fail(f"{where}: {exc}", EXIT_USAGE)


def _current_addresses(app: App) -> frozenset[str]:
    from appliance.policy.snapshot import load_snapshot

    conn = sqlite.connect(app.paths.registry, readonly=True)
    try:
        snapshot = load_snapshot(conn)
    finally:
        conn.close()
    return gateway_scope.subject_addresses(snapshot, app.clock.now())


@click.group("gateway")
def gateway() -> None:
    """Transparent interception on the gateway: nftables rules and the subject scope."""


@gateway.command("rules")
@click.option("--apply", "do_apply", is_flag=True, help="load the rules (replacing ours, if any)")
@click.option("--remove", "do_remove", is_flag=True, help="delete the rules (table inet lbm)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def rules(app: App, do_apply: bool, do_remove: bool, as_json: bool) -> None:
    """Print the nftables ruleset for transparent interception; --apply loads it."""
    if do_apply and do_remove:
        fail("--apply and --remove exclude each other", EXIT_USAGE)
    app.require_initialised()
    table = f"{gateway_rules.FAMILY} {gateway_rules.TABLE}"
    if do_remove:
        try:
            removed = gateway_rules.remove()
        except gateway_rules.RulesError as exc:
            fail(str(exc))
        if removed:
            app.audit.append(Action.GATEWAY_RULES_REMOVE, app.actor, table=table)
        text = (
            f"removed table {table}" if removed else f"table {table} is not loaded; nothing to do"
        )
        emit({"table": table, "removed": removed}, as_json, text)
        return
    spec = spec_from_config(app)
    if spec.scope == "subjects" and spec.interface not in app.config["capture.interfaces"]:
        click.echo(
            f"lbm gateway rules: note: [capture] interfaces does not include {spec.interface}: "
            "connections forwarded past the proxy will have no web or flow rows",
            err=True,
        )
    ruleset = gateway_rules.render(spec)
    digest = hashlib.sha256(ruleset.encode()).hexdigest()
    result: dict[str, Any] = {
        "table": table,
        "interface": spec.interface,
        "networks": list(spec.networks),
        "port": spec.port,
        "scope": spec.scope,
        "sha256": digest,
        "ruleset": ruleset,
        "applied": False,
    }
    if do_apply:
        addresses = _current_addresses(app) if spec.scope == "subjects" else frozenset()
        try:
            gateway_rules.apply(spec, addresses)
        except gateway_rules.RulesError as exc:
            fail(str(exc))
        result["applied"] = True
        app.audit.append(
            Action.GATEWAY_RULES_APPLY,
            app.actor,
            table=table,
            interface=spec.interface,
            networks=list(spec.networks),
            port=spec.port,
            scope=spec.scope,
            sha256=digest,
        )
    text = ruleset if not do_apply else f"loaded table {table} (sha256 {digest[:16]}...)"
    emit(result, as_json, text)


@gateway.command("scope-sync")
@pass_app
def scope_sync(app: App) -> None:
    """Keep the subject sets in step with the policy until SIGTERM/SIGINT."""
    app.require_initialised()
    cfg = app.config
    if cfg["web.mode"] != "transparent" or cfg["web.transparent_scope"] != "subjects":
        fail(
            f"{app.config_path}: scope-sync needs [web] mode = 'transparent' and "
            "transparent_scope = 'subjects'",
            EXIT_USAGE,
        )
    from appliance.cli.auth_cmd import snapshot_source

    def log(message: str) -> None:
        click.echo(f"lbm gateway scope-sync: {message}", err=True)

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    # the snapshot follows registry and config changes by itself: a reload (SIGHUP, which
    # `lbm run` passes to every daemon) has nothing to do
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    source = snapshot_source(app)
    sync = gateway_scope.ScopeSync(source.current, app.clock.now, log)
    run_dir: Path = app.paths.run
    run_dir.mkdir(parents=True, exist_ok=True)
    app.audit.append(Action.DAEMON_START, app.actor, daemon="scope-sync")
    ready = None
    try:
        sync.step()
        ready = announce_ready(run_dir, "scope-sync")
        while not stop.wait(gateway_scope.INTERVAL):
            sync.step()
            notify_systemd(b"WATCHDOG=1")  # from the loop: a hung loop stops the pings
    finally:
        source.stop()
        if ready is not None:
            ready.unlink(missing_ok=True)
        # the sets stay as they are: a restart keeps subjects' capture, and an address left in
        # a set only reaches the proxy, which decides by identity
        app.audit.append(Action.DAEMON_STOP, app.actor, daemon="scope-sync")
    sys.exit(0)

"""The list of command groups `lbm` offers, in help order. Add a module's group here."""

from __future__ import annotations

import importlib

import click

# (module, attribute): each module defines one click command or group.
COMMANDS: list[tuple[str, str]] = [
    ("appliance.cli.init_cmd", "init"),
    ("appliance.cli.config_cmd", "config"),
    ("appliance.cli.audit_cmd", "audit"),
    ("appliance.cli.officer_cmd", "officer"),
    ("appliance.cli.auth_cmd", "auth"),
    ("appliance.cli.identity_cmd", "identity"),
    ("appliance.cli.users_cmd", "users"),
    ("appliance.cli.keys_cmd", "keys"),
    ("appliance.cli.archive_cmd", "archive"),
    ("appliance.cli.evidence_cmd", "evidence"),
    ("appliance.cli.run_cmd", "run"),
    ("appliance.cli.status_cmd", "status"),
    ("appliance.cli.housekeeping_cmd", "housekeeping"),
    ("appliance.cli.capture_cmd", "capture"),
    ("appliance.cli.smtp_cmd", "smtp"),
    ("appliance.cli.proxy_cmd", "proxy"),
    ("appliance.cli.gateway_cmd", "gateway"),
    ("appliance.cli.demo_cmd", "demo"),
]


def all_commands() -> list[click.Command]:
    found = []
    for module_name, attr in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not built yet
            raise
        found.append(getattr(module, attr))
    return found

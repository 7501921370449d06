"""The list of command groups `lbm` offers, in help order. Add a module's group here.

Modules are imported only when their command runs (`LazyGroup`): `lbm status` does not pay
for the capture pipeline, numpy or mitmproxy, which every test and every operator command would.
The attribute name is the command's name.
"""

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
    ("appliance.cli.search_cmd", "search"),
    ("appliance.cli.evidence_cmd", "evidence"),
    ("appliance.cli.run_cmd", "run"),
    ("appliance.cli.status_cmd", "status"),
    ("appliance.cli.metrics_server", "metrics"),
    ("appliance.cli.housekeeping_cmd", "housekeeping"),
    ("appliance.cli.retention_cmd", "retention"),
    ("appliance.cli.report_cmd", "report"),
    ("appliance.cli.capture_cmd", "capture"),
    ("appliance.cli.smtp_cmd", "smtp"),
    ("appliance.cli.proxy_cmd", "proxy"),
    ("appliance.cli.gateway_cmd", "gateway"),
    ("appliance.cli.demo_cmd", "demo"),
]


def load(name: str) -> click.Command | None:
    """The command called `name`, importing only its module (None: unknown or not built)."""
    for module_name, attr in COMMANDS:
        if attr != name:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # not built yet
            raise
        command: click.Command = getattr(module, attr)
        return command
    return None


class LazyGroup(click.Group):
    """A click group whose subcommands come from COMMANDS, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(attr for _, attr in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or load(cmd_name)

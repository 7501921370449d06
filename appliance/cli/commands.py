"""The list of command groups `lbm` offers, in help order. Add a module's group here.

Modules are imported only when their command runs (`LazyGroup`): `lbm status` does not pay
for the capture pipeline, numpy or mitmproxy, which every test and every operator command would.
`lbm --help` imports none of them either: it lists each group with the first paragraph of its
help kept here (tests/cli/test_boot_help.py checks that it matches the group's own).
The attribute name is the command's name.
"""

from __future__ import annotations

import importlib

import click

# (module, attribute, first paragraph of the group's help): each module defines one click
# command or group.
COMMANDS: list[tuple[str, str, str]] = [
    (
        "appliance.cli.init_cmd",
        "init",
        "Create the data directory (0700), default config, signing key and empty registry.",
    ),
    ("appliance.cli.config_cmd", "config", "Validate and show the configuration."),
    ("appliance.cli.audit_cmd", "audit", "Show, verify and repair the audit log."),
    (
        "appliance.cli.officer_cmd",
        "officer",
        "The officer register: who may authorise, in which role and rank, from when to when.",
    ),
    (
        "appliance.cli.auth_cmd",
        "auth",
        "Authorisations: who is recorded in full, on which channels, until when.",
    ),
    (
        "appliance.cli.identity_cmd",
        "identity",
        "The identity map: usernames, email addresses and IP leases of principals.",
    ),
    ("appliance.cli.users_cmd", "users", "Proxy and SMTP AUTH users (the users file, bcrypt)."),
    (
        "appliance.cli.keys_cmd",
        "keys",
        "Investigator keys, development identities and the gateway signing key.",
    ),
    (
        "appliance.cli.archive_cmd",
        "archive",
        "Verify archives, recover cut-off segments, list records, export them.",
    ),
    (
        "appliance.cli.search_cmd",
        "search",
        "Search the metadata streams; person-level searches need --ref and --reason.",
    ),
    (
        "appliance.cli.evidence_cmd",
        "evidence",
        "Open evidence bundles on the investigator's machine.",
    ),
    (
        "appliance.cli.run_cmd",
        "run",
        "Start every enabled daemon; Ctrl-C or SIGTERM stops them all.",
    ),
    (
        "appliance.cli.status_cmd",
        "status",
        "Show the gateway id, signing key, daemons, counters and authorisations due.",
    ),
    (
        "appliance.cli.metrics_server",
        "metrics",
        "Prometheus counters of every daemon, on one loopback port.",
    ),
    (
        "appliance.cli.housekeeping_cmd",
        "housekeeping",
        "The maintenance daemon (expiries, identity feed, warnings).",
    ),
    (
        "appliance.cli.retention_cmd",
        "retention",
        "Retention: remove metadata and archives past their time (dry run by default).",
    ),
    (
        "appliance.cli.report_cmd",
        "report",
        "Counts for the scrutiny body: authorisations, reviews, searches, exports, purges,\n"
        "refusals, gaps and whether the audit chain verified. Never content or results.",
    ),
    (
        "appliance.cli.capture_cmd",
        "capture",
        "Packet capture: replay capture files or capture from an interface.",
    ),
    ("appliance.cli.smtp_cmd", "smtp", "The SMTP relay: run it, inspect and manage its queue."),
    ("appliance.cli.proxy_cmd", "proxy", "The intercepting web proxy."),
    (
        "appliance.cli.gateway_cmd",
        "gateway",
        "Transparent interception on the gateway: nftables rules and the subject scope.",
    ),
    (
        "appliance.cli.demo_cmd",
        "demo",
        "Run the appliance on loopback with two pretend users, one under an authorisation: "
        "their\ntraffic, their metadata side by side, the subject's evidence. Under a minute; "
        "leaves\nnothing running.",
    ),
]


def load(name: str) -> click.Command | None:
    """The command called `name`, importing only its module (None: unknown or not built)."""
    for module_name, attr, _help in COMMANDS:
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
        return [*super().list_commands(ctx), *(attr for _, attr, _ in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or load(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section of `--help`, from COMMANDS: no command module is imported."""
        helps = {name: cmd.help or "" for name, cmd in self.commands.items() if not cmd.hidden}
        for _, attr, text in COMMANDS:
            helps.setdefault(attr, text)
        if not helps:
            return
        limit = formatter.width - 6 - max(len(name) for name in helps)
        with formatter.section("Commands"):
            formatter.write_dl([(n, short_help(t, limit)) for n, t in helps.items()])


def short_help(text: str, limit: int) -> str:
    """The line `--help` shows for a group whose help is `text`, as click words it."""
    return click.Command(None, help=text).get_short_help_str(limit)

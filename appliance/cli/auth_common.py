"""What every `lbm auth` subcommand shares (appliance/cli/auth_cmd.py, auth_grant.py): the
registry opened with policy and store errors turned into one-line messages and exit codes,
the `--officer` and `--json` options, and an officer's signed file read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, fail
from appliance.cli.signed_files import read_signed
from appliance.config import ConfigError
from appliance.policy import InvalidInput, PolicyError
from appliance.policy.officer_signatures import Signed
from appliance.policy.registry import Registry
from store import StoreError


@contextmanager
def open_registry(app: App) -> Iterator[Registry]:
    """Open the registry; turn policy and store errors into one-line messages and exit codes."""
    app.require_initialised()
    reg = Registry.open(
        app.paths,
        clock=app.clock,
        actor=app.actor,
        audit=app.audit,
        custodians=app.config["keys.custodians"],
        renewal_window_days=app.config["policy.renewal_window_days"],
        require_signature=app.config["policy.require_officer_signature"],
    )
    try:
        yield reg
    except InvalidInput as exc:
        fail(str(exc), EXIT_USAGE)
    except (PolicyError, StoreError) as exc:  # RuleViolation included
        fail(str(exc), EXIT_FAIL)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        reg.close()


officer_option = click.option(
    "--officer",
    "officer",
    metavar="PRINCIPAL",
    required=True,
    help="the acting officer's principal (name, role and rank come from the officer register)",
)


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


def signed(statement: Path | None, signature: Path | None, what: str) -> Signed | None:
    """The officer's signed file (`--statement` / `--from-file` with `--signature`), if any."""
    return read_signed(statement, signature, what, "the officer")

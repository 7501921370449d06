"""The context every `lbm` command shares: data directory, configuration, clock, audit, actor.

Everything is loaded lazily, so `lbm init` and `lbm config check` work before the data directory
exists, and a configuration error surfaces as one line with exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.config import Config, ConfigError, load_config
from store import StoreError, signing
from store.audit import AuditLog, current_actor
from store.clock import Clock
from store.paths import DataPaths

EXIT_USAGE = 2  # configuration or command-line error
EXIT_FAIL = 1  # a check failed or an operation was refused


class App:
    def __init__(self, data_dir: str | None, config: str | None) -> None:
        root = data_dir or os.environ.get("LBM_DATA_DIR") or "./lbm-data"
        self.paths = DataPaths(Path(root).absolute())
        cfg = config or os.environ.get("LBM_CONFIG")
        self.config_path = Path(cfg).absolute() if cfg else self.paths.config
        self.config_explicit = cfg is not None

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path, required=self.config_explicit)

    @cached_property
    def clock(self) -> Clock:
        return Clock(allow_fake=self.config.fake_clock)

    @cached_property
    def gateway_key(self) -> signing.GatewayKey:
        return signing.load(self.paths)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(
            self.paths,
            self.gateway_key,
            self.clock,
            witness=bool(self.config["audit.syslog"]),
            witness_socket=str(self.config["audit.witness_socket"]),
        )

    @cached_property
    def actor(self) -> str:
        return current_actor()

    def require_initialised(self) -> None:
        if not self.paths.signing_key.exists():
            fail(
                f"{self.paths.root}: not an initialised data directory (run `lbm init`)", EXIT_USAGE
            )


def fail(message: str, code: int = EXIT_FAIL) -> NoReturn:
    click.echo(f"lbm: error: {message}", err=True)
    sys.exit(code)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print `data` as JSON (for --json) or `text`."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


pass_app = click.make_pass_decorator(App)


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Turn configuration and store errors into one-line messages with the right exit code."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except StoreError as exc:
        fail(str(exc), EXIT_FAIL)

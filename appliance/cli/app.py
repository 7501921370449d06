"""The context every `lbm` command shares: data directory, configuration, clock, audit, actor.

Everything is loaded lazily, so `lbm init` and `lbm config check` work before the data directory
exists, and a configuration error surfaces as one line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.config import Config, ConfigError, load_config
from appliance.config.schema_storage import store_settings
from store import StoreError, safefile, signing
from store.actor import current_actor
from store.audit import AuditLog
from store.clock import FAKE_NOW_ENV, Clock, parse_utc
from store.paths import DataPaths

EXIT_USAGE = 2  # configuration or command-line error
EXIT_FAIL = 1  # a check failed or an operation was refused
FAKE_CLOCK_WARNING = (
    "lbm: warning: fake clock enabled ([testing] fake_clock); never on a live gateway"
)


def check_fake_clock(config: Config, paths: DataPaths) -> None:
    """Announce an allowed fake clock on stderr; refuse it outright in a data dir made by
    `lbm init --system`, where it could backdate evidence."""
    if not config.fake_clock:
        return
    if paths.system_marker.exists():
        raise ConfigError(
            f"{config.path}: [testing] fake_clock = true is refused: {paths.root} was made by "
            f"`lbm init --system` ({paths.system_marker.name}), a live gateway"
        )
    click.echo(FAKE_CLOCK_WARNING, err=True)


def check_trusted(path: Path, what: str) -> None:
    """ConfigError if `path` (when it exists) belongs to a user other than root or this
    process's, or group or others may write it. `sudo -u lbm lbm --config MINE.toml` (or
    `--data-dir MINE`) would otherwise let whoever wrote MINE name themselves a custodian, or
    bring a registry where they are assigned to a reference on a colleague."""
    if os.geteuid() == 0:  # root administers every data directory (and is trusted anyway)
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{path}: {what}: {exc.strerror}") from None
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise ConfigError(
            f"{path}: {what} is owned by uid {st.st_uid} or writable by group or others: "
            f"only root or this user (uid {os.geteuid()}) may control it"
        )


class App:
    def __init__(self, data_dir: str | None, config: str | None) -> None:
        root = data_dir or os.environ.get("LBM_DATA_DIR") or "./lbm-data"
        self.paths = DataPaths(Path(root).absolute())
        cfg = config or os.environ.get("LBM_CONFIG")
        self.config_path = Path(cfg).absolute() if cfg else self.paths.config
        self.config_explicit = cfg is not None

    @cached_property
    def config(self) -> Config:
        check_trusted(self.paths.root, "the data directory")
        check_trusted(self.config_path, "the configuration file")
        config = load_config(self.config_path, required=self.config_explicit)
        check_fake_clock(config, self.paths)
        # `[store]` roots travel with the paths, so every writer and reader made from
        # `app.paths` after this point publishes to and reads from them (issue 19)
        self.paths = dataclasses.replace(self.paths, store=store_settings(config, self.paths.root))
        return config

    @cached_property
    def clock(self) -> Clock:
        clock = Clock(allow_fake=self.config.fake_clock)
        fake = os.environ.get(FAKE_NOW_ENV)
        if clock.allow_fake and fake:
            try:
                parse_utc(fake)
            except ValueError as exc:  # one line, not a traceback at the first clock read
                raise ConfigError(f"{FAKE_NOW_ENV}: {exc}") from None
        return clock

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
        try:
            check_trusted(self.paths.root, "the data directory")
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        if not self.paths.signing_key.exists():
            fail(
                f"{self.paths.root}: not an initialised data directory (run `lbm init`)", EXIT_USAGE
            )
        # load the configuration now: `self.paths` carries the `[store]` roots only from then
        # on, and a command that passed `app.paths` before its first config read (retention)
        # worked on the data directory's default roots instead of the configured ones
        _ = self.config


_exit_without_teardown = False


def exit_without_teardown() -> None:
    """A command that has closed, flushed and fsynced everything it wrote asks `main` to end
    the process with `os._exit` once it returns: tearing down an interpreter that loaded
    numpy and pyarrow (freeing every module's objects, a last garbage collection) took 40-55
    ms of a capture replay (docs/startup.md). Output is flushed and `atexit` handlers run
    first; `main` ignores the request unless it runs as the program (not in a test's process)
    and no other thread is alive."""
    global _exit_without_teardown
    _exit_without_teardown = True


def teardown_skipped() -> bool:
    return _exit_without_teardown


def is_program() -> bool:
    """True when `lbm` runs as the program: the `lbm` script or `python -m appliance.cli.main`,
    never a test calling `main()` or click's runner in its own process. Process-wide settings
    (the exit without teardown, a replay's garbage collection) are only made then."""
    top = sys.modules.get("__main__")
    spec = getattr(top, "__spec__", None)
    if spec is not None and spec.name == "appliance.cli.main":
        return True
    return os.path.basename(str(getattr(top, "__file__", ""))) == "lbm"


def fail(message: str, code: int = EXIT_FAIL) -> NoReturn:
    click.echo(f"lbm: error: {message}", err=True)
    sys.exit(code)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print `data` as JSON (for --json) or `text`."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


def read_identity(source: str, option: str = "--identity") -> str:
    """An age identity from stdin (`-`) or a regular file; a FIFO, device, socket or directory is
    refused at once rather than blocking. The text stays in memory only."""
    if source == "-":
        return sys.stdin.read()
    try:
        return safefile.read_regular(source, f"identity file ({option})", 1024 * 1024).decode()
    except safefile.UnsafeFileError as exc:
        fail(str(exc), EXIT_USAGE)
    except UnicodeDecodeError:
        fail(f"{option} {source}: not a text file (an age identity is text)", EXIT_USAGE)


pass_app = click.make_pass_decorator(App)


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Turn configuration and store errors into one-line messages with the right exit code."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except StoreError as exc:
        fail(str(exc), EXIT_FAIL)

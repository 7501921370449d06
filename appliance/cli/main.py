"""`lbm`: the composition root of the command line.

Global options come before the subcommand: `lbm --data-dir DIR --config FILE SUBCOMMAND ...`.
Each concern registers its own click group in its own module; this file only composes them.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import click

from appliance.cli.app import EXIT_FAIL, EXIT_USAGE, App, is_program, teardown_skipped
from appliance.cli.commands import LazyGroup
from appliance.config import ConfigError
from store import StoreError


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", metavar="DIR", help="data directory (else $LBM_DATA_DIR, ./lbm-data)")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="configuration file (else $LBM_CONFIG, DATA_DIR/lbm.toml)",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None, config_file: str | None) -> None:
    """lbm-gateway: lawful-business-monitoring appliance."""
    ctx.obj = App(data_dir, config_file)


def main() -> None:
    # Every file lbm writes under the data directory is private to the gateway's user, whatever
    # the caller's umask: 0600 files, 0700 directories (store/fsutil also sets modes explicitly).
    # Daemons started by `lbm run` are `lbm ...` command lines, so they come through here too.
    os.umask(0o077)
    try:
        try:
            cli.main(prog_name="lbm", standalone_mode=True)
        except ConfigError as exc:
            click.echo(f"lbm: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except StoreError as exc:
            click.echo(f"lbm: error: {exc}", err=True)
            sys.exit(EXIT_FAIL)
    except SystemExit as exc:
        if teardown_skipped() and is_program() and isinstance(exc.code, int | None):
            _end_now(exc.code or 0)
        raise


def _end_now(code: int) -> None:
    """`os._exit(code)` after what a normal exit does that matters here: output flushed and
    `atexit` handlers run. Returns (normal exit follows) if another thread is alive or the
    output cannot be flushed (a closed pipe: Python reports it as usual)."""
    if threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    main()

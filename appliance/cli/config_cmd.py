"""`lbm config check | show`: validate a configuration file, print the effective configuration."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.app import App, check_fake_clock, emit, pass_app
from appliance.config import SCHEMA, ConfigError, load_config
from store.safefile import UnsafeFileError, check_regular


@click.group("config")
def config() -> None:
    """Validate and show the configuration."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@pass_app
def check(app: App, file: Path | None) -> None:
    """Validate FILE (default: the configuration in use). Exit 2 with the problem if invalid."""
    path = file.absolute() if file else app.config_path
    cfg = load_config(path, required=True)
    check_fake_clock(cfg, app.paths)
    feed = cfg.identity_feed(app.paths.root)
    if feed is not None:
        try:
            check_regular(feed, "identity feed")
        except UnsafeFileError as exc:
            raise ConfigError(f"{path}: [identity] feed: {exc}") from None
    click.echo(f"{path}: ok")


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, as_json: bool) -> None:
    """Print the effective configuration and where each value came from."""
    cfg = app.config
    rows = [
        {
            "key": opt.name,
            "value": "<redacted>" if opt.secret and cfg.values[opt.name] else cfg.values[opt.name],
            "source": cfg.sources[opt.name],
            "help": opt.help,
        }
        for opt in SCHEMA
    ]
    lines = [
        f"# configuration file: {cfg.path}"
        + (" (not present: defaults)" if cfg.missing_file else "")
    ]
    width = max(len(r["key"]) for r in rows)
    for row in rows:
        lines.append(f"{row['key']:<{width}} = {row['value']!r}  # {row['source']}")
    emit(rows, as_json, "\n".join(lines))

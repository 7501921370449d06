"""`lbm init`: create the data directory, default config, gateway signing key and empty registry.

Idempotent: it creates only what is missing, so `lbm init && lbm run` is safe to repeat. Existing
keys and configuration are never overwritten.
"""

from __future__ import annotations

import os

import click

from appliance.cli.app import App, emit, fail, pass_app
from appliance.config.load import render_default
from appliance.config.schema import ID_RE
from store import investigators as investigators_table
from store import signing, sqlite
from store.audit import Action
from store.fsutil import atomic_write, ensure_dir

SUBDIRS = ("audit", "keys", "metadata", "journal", "archive", "keystore", "spool", "run")


def _init_registry(app: App) -> None:
    conn = sqlite.connect(app.paths.registry)
    try:
        investigators_table.ensure_schema(conn)
        try:
            from appliance.policy import registry
        except ImportError:  # registry not built in this checkout
            return
        ensure = getattr(registry, "ensure_schema", None)
        if ensure is not None:
            ensure(conn)
    finally:
        conn.close()


@click.command("init")
@click.option("--gateway-id", metavar="ID", help="gateway id written to a new config (default gw1)")
@click.option("--json", "as_json", is_flag=True, help="print what was created as JSON")
@pass_app
def init(app: App, gateway_id: str | None, as_json: bool) -> None:
    """Create the data directory (0700), default config, signing key and empty registry."""
    root = app.paths.root
    created: list[str] = []
    if gateway_id is not None and not ID_RE.match(gateway_id):
        fail(f"--gateway-id {gateway_id!r}: must match [a-z0-9][a-z0-9._-]*", 2)
    if not root.exists():
        created.append(str(root))
    ensure_dir(root)
    os.chmod(root, 0o700)
    for name in SUBDIRS:
        ensure_dir(root / name)
    if not app.config_path.exists():
        text = render_default()
        if gateway_id:
            text = text.replace('id = "gw1"', f'id = "{gateway_id}"', 1)
        ensure_dir(app.config_path.parent)
        atomic_write(app.config_path, text.encode(), mode=0o600)
        created.append(str(app.config_path))
    elif gateway_id and app.config.gateway_id != gateway_id:
        fail(
            f"{app.config_path}: [gateway] id is {app.config.gateway_id!r}; edit the file to "
            "change it",
            2,
        )
    config = app.config  # validates an existing file: a bad one stops init here
    new_key = not app.paths.signing_key.exists()
    if new_key:
        signing.create(app.paths, config.gateway_id)
        created.append(str(app.paths.signing_key))
    new_registry = not app.paths.registry.exists()
    _init_registry(app)
    if new_registry:
        created.append(str(app.paths.registry))
    key = app.gateway_key
    if created:
        app.audit.append(
            Action.INIT,
            app.actor,
            gateway=config.gateway_id,
            key_fingerprint=key.fingerprint,
            created=created,
        )
    result = {
        "data_dir": str(root),
        "config": str(app.config_path),
        "gateway": config.gateway_id,
        "key_fingerprint": key.fingerprint,
        "created": created,
    }
    text = (
        f"initialised {root} (gateway {config.gateway_id}, key {key.fingerprint[:16]}...)"
        if created
        else f"{root} is already initialised; nothing changed"
    )
    emit(result, as_json, text)

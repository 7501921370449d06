"""`lbm init`: create the data directory, default config, gateway signing key and empty registry.

Idempotent: it creates only what is missing, so `lbm init && lbm run` is safe to repeat. Existing
keys and configuration are never overwritten.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from pathlib import Path

import click

from appliance.cli import systemd_units
from appliance.cli.app import App, emit, fail
from appliance.cli.textsafe import safe
from appliance.config.load import render_default
from appliance.config.schema import ID_RE, MAX_ID_LENGTH
from store import investigators as investigators_table
from store import signing, sqlite
from store.audit import Action
from store.fsutil import atomic_write, ensure_dir

SYSTEM_MARKER_TEXT = (
    b"# Made by `lbm init --system`: a live gateway. lbm refuses [testing] fake_clock here.\n"
)
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


def _chown_to(root: Path, user: str) -> None:
    """Give the service user its data directory, when that user exists and we may."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        click.echo(
            f"lbm init: note: user {user!r} does not exist yet; chown {root} to it", err=True
        )
        return
    if os.geteuid() != 0:
        return
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)


def _share_config(path: Path, user: str) -> None:
    """/etc/lbm/lbm.toml 0640 root:USER: the units run as USER and must read it; only root
    changes it."""
    os.chmod(path, 0o640)
    try:
        gid = pwd.getpwnam(user).pw_gid
    except KeyError:
        return  # noted by _chown_to
    if os.geteuid() == 0:
        os.chown(path, 0, gid)


@click.command("init")
@click.option("--gateway-id", metavar="ID", help="gateway id written to a new config (default gw1)")
@click.option(
    "--system",
    is_flag=True,
    help="install for systemd: data in /var/lib/lbm, config /etc/lbm/lbm.toml, units",
)
@click.option(
    "--root",
    "prefix",
    type=click.Path(file_okay=False, path_type=Path),
    help="with --system: write under this directory instead of / (packaging, tests)",
)
@click.option("--user", default="lbm", show_default=True, help="with --system: service user")
@click.option(
    "--store-network",
    "store_networks",
    multiple=True,
    metavar="CIDR",
    help="with --system: the object store's addresses (repeatable); the capture and "
    "housekeeping units may reach them and nothing else (for s3:// roots in [store])",
)
@click.option("--json", "as_json", is_flag=True, help="print what was created as JSON")
@click.pass_context
def init(
    ctx: click.Context,
    gateway_id: str | None,
    system: bool,
    prefix: Path | None,
    user: str,
    store_networks: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create the data directory (0700), default config, signing key and empty registry."""
    app: App = ctx.obj
    units: list[Path] = []
    if prefix is not None and not system:
        fail("--root goes with --system", 2)
    if store_networks and not system:
        fail("--store-network goes with --system", 2)
    for net in store_networks:
        try:
            ipaddress.ip_network(net, strict=True)
        except ValueError:
            fail(
                f"--store-network {safe(repr(net[:80]))}: not an IP network (e.g. 10.0.5.20/32)", 2
            )
    if gateway_id is not None and (
        len(gateway_id) > MAX_ID_LENGTH or not ID_RE.fullmatch(gateway_id)
    ):
        shown = repr(gateway_id if len(gateway_id) <= 70 else gateway_id[:67] + "...")
        fail(
            f"--gateway-id {safe(shown)}: must match [a-z0-9][a-z0-9._-]*, "
            f"at most {MAX_ID_LENGTH} characters",
            2,
        )
    if system:
        base = (prefix or Path("/")).absolute()
        rel_data = systemd_units.SYSTEM_DATA_DIR.relative_to("/")
        rel_config = systemd_units.SYSTEM_CONFIG.relative_to("/")
        app = App(str(base / rel_data), str(base / rel_config))
        app.config_explicit = False
        ctx.obj = app
        try:
            rendered = systemd_units.render(
                data_dir=systemd_units.SYSTEM_DATA_DIR,
                config=systemd_units.SYSTEM_CONFIG,
                user=user,
            )
        except systemd_units.UnitError as exc:
            fail(str(exc), 1)
        rendered.update(systemd_units.store_drop_ins(list(store_networks)))
        units = systemd_units.write_units(base, rendered)
    root = app.paths.root
    created: list[str] = [str(u) for u in units]
    if not root.exists():
        created.append(str(root))
    ensure_dir(root)
    os.chmod(root, 0o700)
    for name in SUBDIRS:
        ensure_dir(root / name)
    if system and not app.paths.system_marker.exists():
        atomic_write(app.paths.system_marker, SYSTEM_MARKER_TEXT, mode=0o600)
        created.append(str(app.paths.system_marker))
    if not app.config_path.exists():
        overrides: dict[str, object] = {}
        if gateway_id:
            overrides["gateway.id"] = gateway_id
        # the embedded default: `lbm run` serves the proxy and the relay on loopback, the
        # relay delivering to ./lbm-maildrop (outside the data dir) for the upstream
        overrides["web.enabled"] = True
        overrides["smtp.enabled"] = True
        if system:  # a live gateway: CA1 applications must carry the officer's signature
            overrides["policy.require_officer_signature"] = True
            overrides["evidence.allow_gateway_decrypt"] = False  # bundles only
        text = render_default(overrides)
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
    log = app.paths.audit_log
    if not new_key and (not log.exists() or log.stat().st_size == 0):
        fail(f"{log}: empty while the gateway key exists (log erased?); not starting a new log")
    if new_key:
        signing.create(app.paths, config.gateway_id)
        created.append(str(app.paths.signing_key))
    # the SMTP service certificate (mail-server, issue 15): self-signed when absent
    from appliance.mail.tls import TlsError, ensure_smtp_cert

    try:
        smtp_cert, _smtp_key, smtp_new = ensure_smtp_cert(app.paths.keys, config)
    except TlsError as exc:
        fail(str(exc), 2)
    if smtp_new:
        created.append(str(smtp_cert))
    new_registry = not app.paths.registry.exists()
    _init_registry(app)
    if new_registry:
        created.append(str(app.paths.registry))
    key = app.gateway_key
    # the interception CA (web-auth, issue 14): created when absent, an existing one kept
    from addons.ca import KEY_FILE, CaError, ca_dir, ensure_ca

    new_ca = not (ca_dir(app.paths.keys) / KEY_FILE).exists()
    try:
        ensure_ca(app.paths.keys)
    except CaError as exc:
        fail(str(exc))
    if new_ca:
        created.append(str(ca_dir(app.paths.keys) / KEY_FILE))
    if system:
        _chown_to(root, user)
        _share_config(app.config_path, user)
    if created:
        app.audit.append(
            Action.INIT,
            app.actor,
            gateway=config.gateway_id,
            key_fingerprint=key.fingerprint,
            created=created,
            system=app.paths.system_marker.exists(),
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
    if units:  # the units step: where they went and how to start them (docs/deployment.md)
        text += (
            f"\nunits: {units[0].parent} ({len(units)} files); then: systemctl daemon-reload && "
            "systemctl enable --now lbm.target lbm-proxy lbm-smtp lbm-housekeeping lbm-metrics"
        )
    emit(result, as_json, text)

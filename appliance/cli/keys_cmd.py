"""`lbm keys`: investigators' age keys, development identities, the gateway signing key.

    lbm keys investigator add NAME AGE_PUBLIC_KEY --principal P [--login USER]
                              [--sign-key PUBKEY_FILE]   (OpenSSH Ed25519 public key that
                                                           signs the bundles they open)
    lbm keys investigator list [--json] [--all]
    lbm keys investigator remove NAME
    lbm keys dev-identity [--out FILE]      (outside the data dir; never for evidence)
    lbm keys rotate-signing                 (audited, signed by the old key, which stays
                                             for verification)
    lbm keys show [--json]                  (gateway public key and fingerprint)
    lbm keys rewrap REF --identity FILE|-   (wrap REF's key to exactly the current assignees
                                             and custodians; needs a current holder's identity)

Every change is audited. Private keys are never printed, and the only one written is the
development identity, to a file the operator names outside the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from appliance.cli.app import App, emit, fail, pass_app, read_identity
from store import agefile as age
from store import investigators as table
from store import safefile, signing, sqlite
from store.audit import Action
from store.bech32 import Bech32Error, parse_age_recipient
from store.clock import format_utc
from store.keys import KeyStore

DEV_LABEL = "DEVELOPMENT IDENTITY - NOT FOR EVIDENCE"


@click.group("keys")
def keys() -> None:
    """Investigator keys, development identities and the gateway signing key."""


@keys.group("investigator")
def investigator() -> None:
    """Register, list and remove investigators (holders of an age key)."""


@investigator.command("add")
@click.argument("name")
@click.argument("age_public_key")
@click.option("--principal", required=True, metavar="P", help="the investigator's principal id")
@click.option(
    "--login",
    metavar="USER",
    help="the login user who acts as this investigator on the gateway",
)
@click.option(
    "--sign-key",
    "sign_key",
    metavar="PUBKEY_FILE",
    help="their OpenSSH Ed25519 public key (.pub): it signs MANIFEST.json of opened bundles",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def investigator_add(
    app: App,
    name: str,
    age_public_key: str,
    principal: str,
    login: str | None,
    sign_key: str | None,
    as_json: bool,
) -> None:
    """Register investigator NAME with their age public key (age1...)."""
    app.require_initialised()
    ssh_key: str | None = None
    if sign_key is not None:
        try:
            raw = safefile.read_regular(sign_key, "public key file (--sign-key)", 64 * 1024)
            ssh_key = table.check_ssh_key(raw.decode(), name)
        except safefile.UnsafeFileError as exc:
            fail(str(exc), 2)
        except (UnicodeDecodeError, table.InvestigatorError) as exc:
            fail(f"--sign-key {sign_key}: {exc}", 2)
    try:
        age.parse_recipient(age_public_key)
        parse_age_recipient(age_public_key)  # lower case, and never a low-order point
    except (age.AgeError, Bech32Error) as exc:
        fail(f"AGE_PUBLIC_KEY {age_public_key!r}: {exc}", 2)
    conn = sqlite.connect(app.paths.registry)
    try:
        item = table.add(
            conn, name, age_public_key, principal, format_utc(app.clock.now()), login, ssh_key
        )
    except table.InvestigatorError as exc:
        fail(str(exc))
    finally:
        conn.close()
    app.audit.append(
        Action.INVESTIGATOR_ADD,
        app.actor,
        investigator=name,
        principal=principal,
        login=login,
        recipient=age_public_key,
        recipient_fingerprint=age.recipient_fingerprint(age_public_key),
        ssh_key=ssh_key,
    )
    emit(item.__dict__, as_json, f"added investigator {name} ({principal}) {age_public_key}")


@investigator.command("list")
@click.option("--all", "include_removed", is_flag=True, help="include removed investigators")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def investigator_list(app: App, include_removed: bool, as_json: bool) -> None:
    """List investigators."""
    app.require_initialised()
    conn = sqlite.connect(app.paths.registry)
    try:
        items = table.list_all(conn, include_removed=include_removed)
    finally:
        conn.close()
    if as_json:
        emit([i.__dict__ for i in items], True)
        return
    if not items:
        click.echo("no investigators")
    for i in items:
        state = f"removed {i.removed_at}" if i.removed_at else f"added {i.added_at}"
        click.echo(f"{i.name:<20} {i.principal:<12} {i.recipient} {state}")


@investigator.command("remove")
@click.argument("name")
@pass_app
def investigator_remove(app: App, name: str) -> None:
    """Remove investigator NAME (authorisation keys wrapped to them need a rewrap)."""
    app.require_initialised()
    conn = sqlite.connect(app.paths.registry)
    try:
        item = table.remove(conn, name, format_utc(app.clock.now()))
    except table.InvestigatorError as exc:
        fail(str(exc))
    finally:
        conn.close()
    app.audit.append(
        Action.INVESTIGATOR_REMOVE,
        app.actor,
        investigator=name,
        principal=item.principal,
        recipient=item.recipient,
    )
    click.echo(f"removed investigator {name}; rewrap the authorisation keys they held")


def _inside(path: Path, root: Path) -> bool:
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real == base or base in real.parents


@keys.command("dev-identity")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("lbm-dev-identity.key"),
    show_default=True,
    help="where to write it (must be outside the data directory)",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def dev_identity(app: App, out: Path, as_json: bool) -> None:
    """Write a development investigator identity (age key) and print its public key."""
    out = out.absolute()
    if _inside(out, app.paths.root):
        fail(
            f"--out {out}: inside the data directory {app.paths.root}; an investigator "
            "identity must never be stored with the archives",
            2,
        )
    if out.exists():
        fail(f"--out {out}: exists already; not overwritten", 2)
    secret, public = age.generate()
    text = age.identity_file_text(secret, [DEV_LABEL, f"created: {format_utc(app.clock.now())}"])
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"--out {out}: {exc.strerror}")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    del secret, text
    if app.paths.signing_key.exists():
        app.audit.append(Action.DEV_IDENTITY, app.actor, path=str(out), recipient=public)
    emit({"path": str(out), "public_key": public}, as_json, public)
    if not as_json:
        click.echo(f"wrote {out} ({DEV_LABEL})", err=True)


@keys.command("rotate-signing")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def rotate_signing(app: App, as_json: bool) -> None:
    """Make a new gateway signing key, announced by an audit entry signed by the old one.

    `lbm audit verify --allowed-signers` follows these entries from a pinned key to the new one;
    the old public key stays in keys/retired/ for manifests signed before.
    """
    app.require_initialised()
    old_fp, new_fp = app.audit.rotate_key(app.actor, app.config.gateway_id)
    app.__dict__.pop("gateway_key", None)
    emit(
        {"old_fingerprint": old_fp, "new_fingerprint": new_fp},
        as_json,
        f"rotated gateway signing key: {old_fp} -> {new_fp} (old public key retained; "
        "`lbm status` prints the new allowed-signers line)",
    )


@keys.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, as_json: bool) -> None:
    """Print the gateway's public key, its fingerprint and the retired ones."""
    app.require_initialised()
    public = app.paths.signing_pub.read_text().strip()
    key = signing.load_public(public, str(app.paths.signing_pub))
    retired = sorted(signing.load_retired(app.paths))
    data = {
        "gateway": app.config.gateway_id,
        "public_key": public,
        "fingerprint": signing.fingerprint(key),
        "retired_fingerprints": retired,
        "allowed_signers": f"{app.config.gateway_id} {' '.join(public.split()[:2])}",
    }
    lines = [
        f"gateway:      {data['gateway']}",
        f"public key:   {public}",
        f"fingerprint:  SHA256 hex {data['fingerprint']}",
    ]
    lines += [f"retired:      {fp}" for fp in retired]
    emit(data, as_json, "\n".join(lines))


@keys.command("rewrap")
@click.argument("ref")
@click.option(
    "--identity",
    required=True,
    metavar="FILE|-",
    help="a current holder's age identity ('-' reads stdin); never stored",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def rewrap(app: App, ref: str, identity: str, as_json: bool) -> None:
    """Wrap REF's authorisation key to exactly its current assignees and the custodians."""
    from appliance.policy import PolicyError
    from appliance.policy.registry import Registry

    app.require_initialised()
    identity_text = read_identity(identity)
    custodians = list(app.config["keys.custodians"])
    registry = Registry.open(
        app.paths, clock=app.clock, actor=app.actor, audit=app.audit, custodians=custodians
    )
    try:
        auth = registry.get(ref)
        names = list(registry.current_assignees(auth))
        recipients = []
        for name in names:
            item = table.get(registry.conn, name)
            if item is not None:
                recipients.append(item.recipient)
        KeyStore(app.paths, audit=app.audit, actor=app.actor).rewrap(
            ref, identity_text, recipients + custodians
        )
        registry.record_rewrap(ref, names)
    except PolicyError as exc:
        fail(str(exc))
    finally:
        registry.close()
    del identity_text
    emit(
        {"ref": ref, "investigators": names, "custodians": len(custodians)},
        as_json,
        f"{ref}: key wrapped to {', '.join(names) or 'no investigator'}"
        f" and {len(custodians)} custodian(s)",
    )

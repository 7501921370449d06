"""`lbm evidence open`: on the investigator's machine (no data directory needed).

    lbm evidence open BUNDLE --identity FILE|- --allowed-signers FILE --sign-key FILE --out DIR

checks BUNDLE.json.sig against the gateway's allowed-signers line (from `lbm status`, never from
the bundle) and every file's hash, decrypts in memory with the identity (never stored), writes
the exports, and MANIFEST.json signed with the investigator's SSH key
(appliance/evidence/opening.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.app import fail, read_identity
from appliance.cli.archive_bundle_cmd import report
from appliance.evidence.bundle_common import EvidenceError, now_utc
from appliance.evidence.opening import OpenRequest, open_bundle
from store import StoreError, sshsig
from store.actor import current_actor


@click.group("evidence")
def evidence() -> None:
    """Open evidence bundles on the investigator's machine."""


@evidence.command("open")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--identity", required=True, metavar="FILE|-", help="age identity; never stored")
@click.option(
    "--allowed-signers",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the gateway's allowed-signers line, as `lbm status` prints it (kept apart from bundles)",
)
@click.option(
    "--sign-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="your OpenSSH Ed25519 private key (registered with --sign-key): signs MANIFEST.json",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new directory")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--json", "as_json", is_flag=True)
def open_cmd(
    bundle: Path,
    identity: str,
    allowed_signers: Path,
    sign_key: Path,
    out: Path,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Check BUNDLE, decrypt it in memory and write the exports and a signed MANIFEST.json."""
    try:
        key = sshsig.load_private_key(sign_key)
    except sshsig.SshsigError as exc:
        fail(f"--sign-key: {exc}", 2)
    text = read_identity(identity)
    request = OpenRequest(
        bundle, out, text, allowed_signers, key, current_actor(), now_utc(),
        progress=not no_progress,
    )  # fmt: skip
    try:
        result = open_bundle(request)
    except (EvidenceError, StoreError) as exc:
        fail(f"{exc} (nothing was written)")
    finally:
        del text
    report(result, as_json)

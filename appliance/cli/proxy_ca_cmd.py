"""`lbm proxy ca`: the interception CA's certificate path, SHA-256 fingerprint and PEM, for
deployment to force desktops as a trusted root (never the private key).

Registered into web-core's `lbm proxy` group (appliance/cli/proxy_cmd.py).
"""

from __future__ import annotations

import click

from addons.ca import CaError, ca_info
from appliance.cli.app import App, emit, fail, pass_app


@click.command("ca")
@click.option("--json", "as_json", is_flag=True, help="print path, fingerprint and PEM as JSON")
@click.option("--pem-only", is_flag=True, help="print only the PEM certificate")
@pass_app
def ca(app: App, as_json: bool, pem_only: bool) -> None:
    """Print the interception CA certificate (path, SHA-256 fingerprint, PEM)."""
    app.require_initialised()
    try:
        path, fingerprint, pem = ca_info(app.paths.keys)
    except CaError as exc:
        fail(str(exc))
    if pem_only:
        click.echo(pem, nl=False)
        return
    data = {"certificate": str(path), "sha256": fingerprint, "pem": pem}
    emit(data, as_json, f"certificate: {path}\nsha256: {fingerprint}\n{pem.rstrip()}")

"""`lbm status`: what this gateway is, the key that signs its evidence, and what is running.

The allowed-signers line printed here is what investigators give `ssh-keygen -Y verify` to check
manifests and export bundles (namespace `lbm-evidence`): take it from here, never from a bundle.
"""

from __future__ import annotations

import os

import click

from appliance.cli.app import App, emit, pass_app
from store import witness
from store.audit import AuditLog
from store.signing import public_openssh


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show the gateway id, signing key, allowed-signers line and running daemons."""
    app.require_initialised()
    key = app.gateway_key
    gateway = app.config.gateway_id
    pub = public_openssh(key.public)
    run_dir = app.paths.run
    ready = sorted(p.stem for p in run_dir.glob("*.ready")) if run_dir.is_dir() else []
    ports = (
        {p.stem: p.read_text().strip() for p in sorted(run_dir.glob("*.port"))}
        if run_dir.is_dir()
        else {}
    )
    supervisor = None
    pid_file = run_dir / "lbm-run.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            supervisor = pid if _pid_alive(pid) else None
        except ValueError:
            supervisor = None
    last = None
    for entry in AuditLog(app.paths, None, app.clock).entries():
        last = entry
    w = witness.load_state(app.paths.audit_dir)
    if not app.config["audit.syslog"]:
        w_text = "off ([audit] syslog = false): no off-box witness"
    elif w.failing:
        w_text = f"FAILING since {w.outage_since}: {w.outage_failures} failures ({w.outage_error})"
    else:
        w_text = f"ok (last head sent {w.last_ok or 'never'}; {w.failures_total} failures in all)"
    data = {
        "gateway": gateway,
        "data_dir": str(app.paths.root),
        "config": str(app.config_path),
        "signing_key": pub,
        "signing_key_fingerprint": key.fingerprint,
        "retired_key_fingerprints": sorted(key.retired),
        "allowed_signers": f'{gateway} namespaces="lbm-evidence" {pub}',
        "daemons_ready": ready,
        "ports": ports,
        "supervisor_pid": supervisor,
        "audit_entries": last["seq"] if last else 0,
        "witness": {"state": w_text.split()[0].lower(), "detail": w_text, **w.__dict__},
    }
    lines = [
        f"gateway        {gateway}",
        f"data dir       {app.paths.root}",
        f"signing key    {pub}",
        f"fingerprint    {key.fingerprint}",
        "allowed signers line (ssh-keygen -Y verify; keep a copy off the box for "
        "lbm audit verify --allowed-signers):",
        f"  {data['allowed_signers']}",
        f"daemons ready  {', '.join(ready) or 'none'}",
        f"audit entries  {data['audit_entries']}",
        f"audit witness  {w_text}",
    ]
    for name, port in ports.items():
        lines.append(f"port           {name} {port}")
    emit(data, as_json, "\n".join(lines))

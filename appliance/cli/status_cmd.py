"""`lbm status`: what this gateway is, the key that signs its evidence, and how it is doing.

The allowed-signers line printed here is what investigators give `ssh-keygen -Y verify` to check
manifests and export bundles (namespace `lbm-evidence`): take it from here, never from a bundle.

Operations (from the daemons' `run/NAME.status.json`, appliance.counters): each daemon (running,
pid, port, uptime, last error kind), spool depth, disk free for the data directory (a warning under
`[metrics] disk_warn_free_percent`), metadata writer lag and refused rows, witness failures, the
policy snapshot's age, the audit chain head, and counts of authorisations expiring within 7 days,
reviews due and urgent grants awaiting ratification. Counts only: an operator does not learn who
is monitored. `--officer-view` (for the audit officer) adds the references to those counts and
is audited (`status_officer_view`).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

import click

from appliance.cli.app import App, emit, pass_app
from appliance.cli.daemon_metrics import disk_free_percent, spool_depth
from appliance.cli.metrics_server import _pid_alive, daemon_states
from appliance.cli.policy_state import policy_line, policy_state
from appliance.policy import rules
from appliance.policy.registry_store import load_all
from store import sqlite, witness
from store.audit import Action, AuditLog
from store.signing import public_openssh


def _supervisor(app: App) -> int | None:
    pid_file = app.paths.run / "lbm-run.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def daemons(app: App) -> dict[str, dict[str, Any]]:
    """Each daemon known by a status or readiness file: running, pid, port, uptime, last error."""
    run_dir = app.paths.run
    if not run_dir.is_dir():
        return {}
    states = daemon_states(run_dir)
    for ready in run_dir.glob("*.ready"):  # a daemon that has not written its status yet
        states.setdefault(ready.stem, {"up": True, "state": "starting"})
    out: dict[str, dict[str, Any]] = {}
    for name, s in sorted(states.items()):
        counters = s.get("counters") if isinstance(s.get("counters"), dict) else {}
        out[name] = {
            "running": bool(s["up"]),
            "pid": s.get("pid"),
            "port": s.get("port"),
            "uptime": s.get("uptime") if s["up"] else None,
            "last_error": s.get("last_error"),
            "status_written": s.get("written"),
            "counters": counters,
        }
    return out


def _sum(ds: dict[str, dict[str, Any]], key: str, how: Any = sum) -> Any:
    values = [
        d["counters"][key]
        for d in ds.values()
        if d["running"] and isinstance(d["counters"].get(key), int | float)
    ]
    return how(values) if values else None


def authorisations(app: App, now: datetime) -> dict[str, list[str]]:
    """Refs expiring within 7 days, with a review due, urgent awaiting ratification."""
    out: dict[str, list[str]] = {"expiring_7d": [], "review_due": [], "awaiting_ratification": []}
    if not app.paths.registry.exists():
        return out
    try:
        conn = sqlite.connect(app.paths.registry, readonly=True)
        try:
            auths = load_all(conn)
        finally:
            conn.close()
    except sqlite3.Error:  # a locked or corrupt registry: the policy line says so
        return out
    for auth in auths:
        state = auth.state(now)
        if state not in ("active", "awaiting_ratification", "pending"):
            continue
        if auth.expiry - now <= rules.EXPIRY_WARNING:
            out["expiring_7d"].append(auth.ref)
        if rules.review_due(auth, now):
            out["review_due"].append(auth.ref)
        if auth.awaiting_ratification:
            out["awaiting_ratification"].append(auth.ref)
    return {k: sorted(v) for k, v in out.items()}


def audit_head(app: App) -> dict[str, Any]:
    try:
        head = json.loads(app.paths.audit_head.read_bytes())
        return {"seq": int(head["seq"]), "hash": str(head["hash"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"seq": None, "hash": None}


def _witness(app: App) -> tuple[str, dict[str, Any]]:
    w = witness.load_state(app.paths.audit_dir)
    if not app.config["audit.syslog"]:
        text = "off ([audit] syslog = false): no off-box witness"
    elif w.failing:
        text = f"FAILING since {w.outage_since}: {w.outage_failures} failures ({w.outage_error})"
    else:
        text = f"ok (last head sent {w.last_ok or 'never'}; {w.failures_total} failures in all)"
    return text, {"state": text.split()[0].lower(), "detail": text, **w.__dict__}


def _daemon_line(name: str, d: dict[str, Any]) -> str:
    state = "running" if d["running"] else "stopped"
    parts = [f"  {name:<18} {state:<8}"]
    if d["pid"]:
        parts.append(f"pid {d['pid']}")
    if d["port"]:
        parts.append(f"port {d['port']}")
    if d["uptime"] is not None:
        parts.append(f"up {int(d['uptime'])} s")
    if d["last_error"]:
        err = d["last_error"]
        parts.append(f"last error {err.get('kind')} at {err.get('at')}")
    return " ".join(parts)


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--officer-view",
    is_flag=True,
    help="show the references behind the authorisation counts (audit officer; audited)",
)
@pass_app
def status(app: App, as_json: bool, officer_view: bool) -> None:
    """Show the gateway id, signing key, daemons, counters and authorisations due."""
    app.require_initialised()
    key = app.gateway_key
    gateway = app.config.gateway_id
    pub = public_openssh(key.public)
    run_dir = app.paths.run
    ds = daemons(app)
    w_text, w_data = _witness(app)
    disk = disk_free_percent(app.paths.root)
    warn_at = int(app.config["metrics.disk_warn_free_percent"])
    due = authorisations(app, app.clock.now())
    entries = 0
    for entry in AuditLog(app.paths, None, app.clock).entries():
        entries = int(entry["seq"])
    data: dict[str, Any] = {
        "gateway": gateway,
        "data_dir": str(app.paths.root),
        "config": str(app.config_path),
        "signing_key": pub,
        "signing_key_fingerprint": key.fingerprint,
        "retired_key_fingerprints": sorted(key.retired),
        "allowed_signers": f'{gateway} namespaces="lbm-evidence" {pub}',
        "daemons": ds,
        "daemons_ready": sorted(p.stem for p in run_dir.glob("*.ready"))
        if run_dir.is_dir()
        else [],
        "ports": {p.stem: p.read_text().strip() for p in sorted(run_dir.glob("*.port"))}
        if run_dir.is_dir()
        else {},
        "supervisor_pid": _supervisor(app),
        "spool_depth": spool_depth(app.paths.spool),
        "disk_free_percent": disk,
        "disk_warning": disk < warn_at,
        "writer_lag_seconds": _sum(ds, "metadata_writer_lag_seconds", max),
        "metadata_rows_refused": _sum(ds, "metadata_rows_refused"),
        "store_backlog_bytes": _sum(ds, "store_backlog_bytes"),
        "store_backlog_files": _sum(ds, "store_backlog_files"),
        "store_upload_failures": _sum(ds, "store_upload_failures"),
        "policy_snapshot_age_seconds": _sum(ds, "policy_snapshot_age_seconds", max),
        "audit_entries": entries,
        "audit_head": audit_head(app),
        "witness": w_data,
        "fake_clock": app.config.fake_clock,
        "policy": (policy := policy_state(run_dir)),
        "authorisations": {k: len(v) for k, v in due.items()},
    }
    if officer_view:
        data["authorisation_refs"] = due
        app.audit.append(
            Action.STATUS_OFFICER_VIEW,
            app.actor,
            refs=sorted({r for refs in due.values() for r in refs}),
            counts=data["authorisations"],
        )
    lines = [
        f"gateway        {gateway}",
        f"data dir       {app.paths.root}",
        f"signing key    {pub}",
        f"fingerprint    {key.fingerprint}",
        "allowed signers line (ssh-keygen -Y verify; keep a copy off the box for "
        "lbm audit verify --allowed-signers):",
        f"  {data['allowed_signers']}",
        f"daemons ready  {', '.join(data['daemons_ready']) or 'none'}",
        *(_daemon_line(n, d) for n, d in ds.items()),
        f"spool          {data['spool_depth']} message(s) in transit",
        f"disk free      {disk:.1f}% of the data directory's file system"
        + (f"  WARNING: below {warn_at}% ([metrics] disk_warn_free_percent)" if disk < warn_at
           else ""),
        f"writer lag     {_fmt(data['writer_lag_seconds'], 's')}; rows refused "
        f"{_fmt(data['metadata_rows_refused'])}",
        f"policy age     {_fmt(data['policy_snapshot_age_seconds'], 's')}",
        f"audit entries  {entries} (head seq {data['audit_head']['seq']}, "
        f"hash {str(data['audit_head']['hash'])[:16]}...)",
        f"audit witness  {w_text}",
        "authorisations {expiring_7d} expiring within 7 days, {review_due} review(s) due, "
        "{awaiting_ratification} urgent awaiting ratification".format(**data["authorisations"]),
    ]  # fmt: skip
    if officer_view:
        for k, refs in due.items():
            lines.append(f"  {k:<22} {', '.join(refs) or '-'}")
    if app.paths.store_settings.metadata_root.startswith("s3://"):  # metadata on object storage
        lines.append(
            f"store uploads  {_fmt(data['store_backlog_files'], 'file(s)')}, "
            f"{_fmt(data['store_backlog_bytes'], 'bytes')} awaiting upload; "
            f"{_fmt(data['store_upload_failures'], 'failed attempts')}"
        )
    if data["fake_clock"]:
        lines.append("fake clock     ENABLED ([testing] fake_clock): never on a live gateway")
    if policy.get("state", "ok") != "ok":
        lines.append(f"policy         {policy_line(policy)}")
    for name, port in data["ports"].items():
        lines.append(f"port           {name} {port}")
    emit(data, as_json, "\n".join(lines))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a (no daemon running)"
    return f"{value}{(' ' + unit) if unit else ''}"

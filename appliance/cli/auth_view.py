"""What `lbm auth` shows: an authorisation as a dict (the JSON output), the aligned `list` table,
the `show` text, and the evidence directory `show --evidence` writes for a reviewer.

Free text (statements, reasons, names) is escaped with `textsafe.safe` before it reaches a
terminal line; JSON output carries it as it is.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.cli.textsafe import safe
from appliance.policy import rules
from appliance.policy.model import Authorisation
from appliance.policy.registry import Registry
from store.clock import format_utc


def _t(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


def auth_dict(
    auth: Authorisation, reg: Registry, now: datetime, *, detail: bool = False
) -> dict[str, Any]:
    app = auth.application
    data: dict[str, Any] = {
        "ref": auth.ref,
        "subject": auth.subject,
        "case_type": auth.case_type.value,
        "purposes": [p.value for p in app.purposes],
        "channels": [c.value for c in auth.channels],
        "urgent": auth.urgent,
        "start": _t(auth.start),
        "expiry": _t(auth.expiry),
        "ratified_at": _t(auth.ratified_at),
        "cancelled_at": _t(auth.cancelled_at),
        "state": auth.state(now),
        "flags": list(rules.warnings(auth, now)),
        "next_review": _t(rules.next_review(auth)),
        "renewals": auth.renewals,
        "officer": app.officer.as_dict(),
        "open_do_not_decrypt": auth.open_do_not_decrypt,
        "retention_days": app.retention_days,
        "assignees": list(reg.current_assignees(auth)),
        "wrapped_to": list(auth.wrapped_to),
        "rewrap_due": reg.rewrap_due(auth),
    }
    if detail:
        data.update(
            {
                "necessity": app.necessity,
                "proportionality": app.proportionality,
                "collateral": app.collateral,
                "ripa_considered": app.ripa_considered,
                "ripa_note": app.ripa_note,
                "cancel_reason": auth.cancel_reason,
                "public_key": auth.public_key,
                "created_at": _t(auth.created_at),
                "history": [e.as_dict() for e in auth.history],
            }
        )
    return data


ENDED = ("expired", "cancelled")


def with_retention_review(data: dict[str, Any], due: dict[str, datetime]) -> dict[str, Any]:
    """Flag `retention_review_due` (and say since when) for an archive whose review is due."""
    when = due.get(data["ref"])
    if when is not None:
        data["flags"] = [*data["flags"], "retention_review_due"]
        data["retention_review_due"] = _t(when)
    return data


def _flags(data: dict[str, Any]) -> list[str]:
    return list(data["flags"]) + (["rewrap_due"] if data["rewrap_due"] else [])


def _summary(data: dict[str, Any]) -> str:
    flags = _flags(data)
    return (
        f"{data['ref']}  subject={data['subject']}  {data['state']}  "
        f"{data['start']} -> {data['expiry']}  channels={','.join(data['channels'])}"
        + (f"  [{', '.join(flags)}]" if flags else "")
    )


LIST_COLUMNS = (
    "REF",
    "SUBJECT",
    "STATE",
    "CASE TYPE",
    "CHANNELS",
    "OFFICER",
    "INVESTIGATORS",
    "START",
    "EXPIRY",
    "FLAGS",
)


def list_table(items: list[dict[str, Any]]) -> str:
    """`lbm auth list` as aligned columns (ids and enum values only; names escaped)."""
    rows = [LIST_COLUMNS] + [
        (
            d["ref"],
            d["subject"],
            d["state"],
            d["case_type"],
            ",".join(d["channels"]),
            d["officer"]["principal"],
            ",".join(d["assignees"]) or "-",
            d["start"],
            d["expiry"],
            ",".join(_flags(d)) or "-",
        )
        for d in items
    ]
    cells = [[safe(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(LIST_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def show_text(data: dict[str, Any]) -> str:
    lines = [_summary(data)]
    keys = (
        "case_type",
        "purposes",
        "urgent",
        "ratified_at",
        "cancelled_at",
        "cancel_reason",
        "officer",
        "next_review",
        "renewals",
        "assignees",
        "wrapped_to",
        "retention_days",
        "open_do_not_decrypt",
        "ripa_considered",
        "ripa_note",
        "necessity",
        "proportionality",
        "collateral",
        "public_key",
    )
    for key in keys:
        if key in data and data[key] not in (None, "", []):
            value = data[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            lines.append(f"  {key}: {safe(value)}")
    return "\n".join(lines)


EVIDENCE_README = """Signed acts of authorisation {ref}, as kept in the gateway's registry.

Each FILE is the exact bytes the officer signed and FILE.sig their detached SSHSIG signature
(namespace lbm-ca1). allowed_signers lists the key the officer register held for each officer
when they acted. Check each one with OpenSSH alone:

{commands}
"""


def write_evidence(reg: Registry, ref: str, directory: Path) -> list[Path]:
    """Write every signed act of `ref` (bytes as signed + signature) and an allowed-signers file
    into `directory` (created; existing files are never overwritten). Returns the files."""
    acts = reg.signatures(ref)
    if not acts:
        raise FileNotFoundError(f"{ref} has no signed acts (no signature was given)")
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    signers: list[str] = []
    commands: list[str] = []

    def put(name: str, data: bytes) -> Path:
        path = directory / name
        with path.open("xb") as handle:  # never overwrite
            handle.write(data)
        written.append(path)
        return path

    for act in acts:
        stem = "application" if act["kind"] in ("grant", "urgent") else act["kind"]
        name = f"{act['seq']:04d}-{stem}.toml"
        put(name, bytes(act["signed_bytes"]))
        put(name + ".sig", bytes(act["signature"]))
        line = f'{act["officer"]} namespaces="lbm-ca1" {act["public_key"]}'
        if line not in signers:
            signers.append(line)
        commands.append(
            f"ssh-keygen -Y verify -f allowed_signers -I {act['officer']} -n lbm-ca1 "
            f"-s {name}.sig < {name}"
        )
    put("allowed_signers", ("\n".join(signers) + "\n").encode())
    text = EVIDENCE_README.format(ref=ref, commands="\n".join(commands))
    put("README.txt", text.encode())
    return written


def evidence_hashes(reg: Registry, ref: str) -> list[dict[str, str]]:
    """SHA-256 of each signed act's bytes and signature (what the evidence audit entry names)."""
    return [
        {
            "signed_sha256": hashlib.sha256(bytes(a["signed_bytes"])).hexdigest(),
            "signature_sha256": hashlib.sha256(bytes(a["signature"])).hexdigest(),
        }
        for a in reg.signatures(ref)
    ]

"""What someone with write access to a data dir (and some signing key) can do to the audit log.

Tests of `lbm audit verify` use these to play the attacker: append a correctly chained entry and
a matching signed head with any key, or start a fresh log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from store import signing
from store.audit import GENESIS, canonical, line_hash
from store.paths import DataPaths


def new_key() -> signing.GatewayKey:
    return signing.GatewayKey(Ed25519PrivateKey.generate(), {})


def forge(
    paths: DataPaths,
    key: signing.GatewayKey,
    action: str = "auth_cancel",
    fields: dict[str, Any] | None = None,
    *,
    new_log: bool = False,
) -> None:
    """Append one entry signed by `key` and a head for it (or start a new log with it)."""
    lines = [] if new_log else paths.audit_log.read_bytes().splitlines()
    seq, prev = len(lines), line_hash(lines[-1]) if lines else GENESIS
    entry: dict[str, Any] = {
        "seq": seq + 1, "ts": "2026-01-02T00:00:00Z", "action": action, "actor": "forger",
        "refs": [], "fields": fields or {}, "prev": prev, "key": key.fingerprint,
    }  # fmt: skip
    entry["sig"] = key.sign(canonical(entry))
    line = canonical(entry)
    paths.audit_log.write_bytes(b"".join(x + b"\n" for x in [*lines, line]))
    head: dict[str, Any] = {"seq": seq + 1, "hash": line_hash(line), "ts": entry["ts"]}
    head["key"] = key.fingerprint
    head["sig"] = key.sign(canonical(head))
    paths.audit_head.write_bytes(canonical(head) + b"\n")


def drop_in_retired(paths: DataPaths) -> signing.GatewayKey:
    """A key of the attacker's, made to look like a retired gateway key."""
    key = new_key()
    paths.old_signing_keys.mkdir(exist_ok=True)
    (paths.old_signing_keys / "x.pub").write_text(signing.public_openssh(key.public) + "\n")
    return key


def allowed_signers(path: Path, *keys: signing.GatewayKey, principal: str = "gw1") -> Path:
    text = "".join(
        f'{principal} namespaces="lbm-evidence" {signing.public_openssh(k.public)}\n' for k in keys
    )
    path.write_text(text)
    return path

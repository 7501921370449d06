"""`lbm archive verify-export DIR`: check a bundle or an opened bundle offline.

Both: BUNDLE.json.sig against the gateway's allowed-signers line the caller gives (never a key
from the directory). A bundle: every file BUNDLE.json lists (SHA-256 and size), no extra file,
and the manifests' signatures and chain (keys listed in the signed BUNDLE.json). An opened
bundle: MANIFEST.json.sig against the investigator's SSH key that the gateway-signed BUNDLE.json
names (or the gateway key, for `lbm archive export`), MANIFEST.json naming this BUNDLE.json's
hash, and every plaintext file it lists. Every changed, missing or extra file is named.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.evidence import bundle_common as common
from store import KeyError_, signing, sshsig
from store.keys import check_ref
from store.manifest import GENESIS, MANIFEST_RE
from store.segment import canonical

OPENED_OWN = {
    common.BUNDLE,
    common.BUNDLE_SIG,
    common.MANIFEST,
    common.MANIFEST_SIG,
    common.SIGNER_FILE,
}


@dataclass
class ExportCheck:
    kind: str  # "bundle" or "opened"
    ref: str = ""
    problems: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _signed(obj: Any, keys: dict[str, Ed25519PublicKey]) -> bool:
    if not isinstance(obj, dict) or "sig" not in obj:
        return False
    body = {k: v for k, v in obj.items() if k != "sig"}
    return signing.verify(keys, str(body.get("key")), canonical(body), str(obj["sig"]))


def _manifest_keys(bundle: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    listed = bundle.get("gateway", {}).get("manifest_keys", {})
    for fp, line in listed.items() if isinstance(listed, dict) else ():
        keys[str(fp)] = signing.load_public(str(line), f"{common.BUNDLE} manifest key")
    return keys


def chain_problems(root: Path, bundle: dict[str, Any]) -> list[str]:
    """The archive copy's manifests (signatures by the gateway keys the signed BUNDLE.json
    lists), their chain and head, and that each bundled segment and index is the one its
    manifest names (by the hashes BUNDLE.json lists, which check_files compares with the
    files). Segments left out of a selection keep their manifests, so the chain is whole."""
    ref = str(bundle.get("ref"))
    try:
        check_ref(ref)
        keys = _manifest_keys(bundle)
    except KeyError_ as exc:
        return [f"{common.BUNDLE}: {exc}"]
    directory = root / "archive" / ref
    listed = {str(f.get("path")): f for f in bundle.get("files", []) if isinstance(f, dict)}
    problems: list[str] = []
    chain: list[tuple[int, str, str]] = []  # (chain_seq, name, manifest sha256)
    for name in sorted(os.listdir(directory)) if directory.is_dir() else []:
        m = MANIFEST_RE.fullmatch(name)
        if not m:
            continue
        where = f"archive/{ref}/{name}"
        raw = (directory / name).read_bytes()
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = None
        if not _signed(manifest, keys):
            problems.append(f"{where}: manifest signature does not verify (altered)")
            continue
        number = int(m.group(1))
        if manifest.get("ref") != ref or manifest.get("segment") != number:
            problems.append(f"{where}: names another segment (renamed or reordered)")
            continue
        for suffix, field_name in ((".age", "ciphertext_sha256"), (".index.jsonl", "index_sha256")):
            item = listed.get(f"archive/{ref}/{number:06d}{suffix}")
            if item is not None and item.get("sha256") != manifest.get(field_name):
                problems.append(
                    f"archive/{ref}/{number:06d}{suffix}: not the file its manifest names"
                )
        chain.append((int(manifest.get("chain_seq", 0)), where, hashlib.sha256(raw).hexdigest()))
    chain.sort()
    prev = GENESIS
    for expected, (seq, where, digest) in enumerate(chain, 1):
        if seq != expected:
            problems.append(
                f"{where}: chain position {seq}, expected {expected} (a manifest removed)"
            )
            return problems
        chain_prev = json.loads((root / where).read_bytes()).get("prev_manifest_sha256")
        if chain_prev != prev:
            problems.append(f"{where}: chain broken (previous-manifest hash differs)")
            return problems
        prev = digest
    try:
        head = json.loads((directory / "chain.json").read_bytes())
    except (OSError, ValueError):
        head = None
    if chain and not _signed(head, keys):
        problems.append(f"archive/{ref}/chain.json: chain head missing or its signature fails")
    elif head is not None and (
        head.get("seq") != len(chain) or head.get("manifest_sha256") != prev
    ):
        problems.append(f"archive/{ref}/chain.json: the head names another end of the chain")
    return problems


def _manifest_signer(bundle: dict[str, Any]) -> tuple[str, str]:
    """(principal, public key line) that must have signed MANIFEST.json."""
    if bundle.get("mode") == "gateway-export":
        gateway = bundle.get("gateway", {})
        return str(gateway.get("id")), str(gateway.get("public_key"))
    inv = bundle.get("investigator", {})
    return str(inv.get("name")), str(inv.get("ssh_key"))


def signer_line(principal: str, key: str) -> str:
    return f'{principal} namespaces="{common.NAMESPACE}" {key}\n'


def _check_opened(root: Path, bundle: dict[str, Any], bundle_sha: str, out: ExportCheck) -> None:
    try:
        manifest, raw = common.read_json(root / common.MANIFEST, common.MANIFEST)
        signature = common.read_signature(root / common.MANIFEST_SIG)
    except common.EvidenceError as exc:
        out.problems.append(str(exc))
        return
    principal, key = _manifest_signer(bundle)
    try:
        sshsig.verify(signature, raw, common.NAMESPACE, key)
    except sshsig.SshsigError as exc:
        out.problems.append(
            f"{common.MANIFEST_SIG}: not a signature over {common.MANIFEST} by {principal}'s key "
            f"that {common.BUNDLE} registers: {exc}"
        )
    if manifest.get("bundle", {}).get("sha256") != bundle_sha:
        out.problems.append(
            f"changed file: {common.BUNDLE} (MANIFEST.json was made from another BUNDLE.json)"
        )
    signer_path = root / common.SIGNER_FILE
    try:
        text = signer_path.read_text()
    except (OSError, UnicodeDecodeError):
        text = None
    if text is None:
        out.problems.append(f"missing file: {common.SIGNER_FILE}")
    elif text != signer_line(principal, key):
        out.problems.append(
            f"changed file: {common.SIGNER_FILE} (does not name the key {common.BUNDLE} registers)"
        )
    try:
        files = common.listed_files(manifest, common.MANIFEST)
    except common.EvidenceError as exc:
        out.problems.append(str(exc))
        return
    out.files = len(files)
    out.problems += common.check_files(root, files, OPENED_OWN)


def verify_export(root: Path, allowed_signers: Path) -> ExportCheck:
    """Check a bundle or an opened bundle in `root`; problems name each file."""
    opened = (root / common.MANIFEST).exists() or (root / common.MANIFEST_SIG).exists()
    result = ExportCheck("opened" if opened else "bundle")
    if not root.is_dir():
        result.problems.append(f"{root}: not a directory")
        return result
    try:
        bundle, bundle_sha = common.verify_bundle(root, allowed_signers)
    except common.EvidenceError as exc:
        result.problems.append(str(exc))
        return result
    result.ref = str(bundle.get("ref"))
    if opened:
        _check_opened(root, bundle, bundle_sha, result)
        return result
    try:
        files = common.listed_files(bundle, common.BUNDLE)
    except common.EvidenceError as exc:
        result.problems.append(str(exc))
        return result
    result.files = len(files)
    result.problems += common.check_files(root, files, {common.BUNDLE, common.BUNDLE_SIG})
    if result.ok:
        result.problems += chain_problems(root, bundle)
    return result

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.evidence import bundle_common as common
from store import KeyError_, signing, sshsig
from store.keys import check_ref
from store.manifest import VerifyReport, verify_archive

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


def chain_problems(root: Path, bundle: dict[str, Any]) -> list[str]:
    """Manifest signatures, chain and head of the bundle's archive copy, with the gateway keys
    the signed BUNDLE.json lists; segments left out of a selection are not missing."""
    ref = str(bundle.get("ref"))
    try:
        check_ref(ref)
    except KeyError_ as exc:
        return [f"{common.BUNDLE}: {exc}"]
    keys: dict[str, Ed25519PublicKey] = {}
    listed = bundle.get("gateway", {}).get("manifest_keys", {})
    for fp, line in listed.items() if isinstance(listed, dict) else ():
        try:
            keys[str(fp)] = signing.load_public(str(line), f"{common.BUNDLE} manifest key")
        except KeyError_ as exc:
            return [str(exc)]
    directory = root / "archive" / ref
    if not directory.is_dir():
        return [f"missing file: archive/{ref}/ (the archive copy)"]
    report = VerifyReport()
    verify_archive(directory, keys, report)
    included = {int(s["number"]) for s in bundle.get("segments", [])}
    problems = []
    for problem in report.problems:
        head = problem.split(":", 1)[0]
        number = head.rsplit("/", 1)[-1]
        left_out = number.isdigit() and int(number) not in included
        if left_out and ("segment file" in problem or "index file" in problem):
            continue
        problems.append(f"archive chain: {problem}")
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


def bundle_sha256(root: Path) -> str:
    return hashlib.sha256((root / common.BUNDLE).read_bytes()).hexdigest()

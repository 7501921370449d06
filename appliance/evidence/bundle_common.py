"""What the gateway side (bundle.py), the investigator side (opening.py) and the offline check
(verify_export.py) share: file names, JSON encoding, hashing, private files, the listed-file
check that names every changed, missing or extra file, and the gateway signature check against
an allowed-signers file given by the caller (never a key taken from the bundle).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.policy.model import Authorisation
from store import safefile, sshsig
from store.clock import format_utc

NAMESPACE = "lbm-evidence"
BUNDLE_FORMAT = "lbm-evidence-bundle/1"
MANIFEST_FORMAT = "lbm-evidence-manifest/1"
BUNDLE = "BUNDLE.json"
BUNDLE_SIG = "BUNDLE.json.sig"
MANIFEST = "MANIFEST.json"
MANIFEST_SIG = "MANIFEST.json.sig"
SIGNER_FILE = "MANIFEST.allowed_signers"  # for `ssh-keygen -Y verify` by a court's expert
MAX_JSON = 64 * 1024 * 1024
SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
SOFTWARE = "lbm-gateway"


class EvidenceError(Exception):
    """A bundle or opened bundle is refused; the message names the file and never content."""


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SOFTWARE)
    except PackageNotFoundError:
        return "unknown"


def encode(obj: dict[str, Any]) -> bytes:
    """The bytes BUNDLE.json and MANIFEST.json are written (and signed) as."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def create_file(path: Path) -> int:
    """A new private file (0600 whatever the umask); never follows or replaces anything."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_new(path: Path, data: bytes) -> None:
    fd = create_file(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p with 0700 for the directories it creates."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def check_out_dir(out: Path, data_root: Path | None) -> Path:
    """An output directory that does not exist yet and is not inside the data directory."""
    out = out.absolute()
    if data_root is not None:
        real_out, real_root = os.path.realpath(out), os.path.realpath(data_root)
        if real_out == real_root or real_out.startswith(real_root + os.sep):
            raise EvidenceError(f"--out {out}: inside the data directory; evidence never goes in")
    if os.path.lexists(out):
        raise EvidenceError(f"--out {out}: exists already; evidence is never written over")
    return out


def read_json(path: Path, what: str) -> tuple[dict[str, Any], bytes]:
    try:
        raw = safefile.read_regular(path, what, MAX_JSON)
    except safefile.UnsafeFileError as exc:
        raise EvidenceError(str(exc)) from None
    try:
        obj = json.loads(raw)
    except ValueError:
        raise EvidenceError(f"{path}: {what} is not valid JSON (altered)") from None
    if not isinstance(obj, dict):
        raise EvidenceError(f"{path}: {what} is not a JSON object (altered)")
    return obj, raw


def read_signature(path: Path) -> bytes:
    try:
        return safefile.read_regular(path, "signature", 64 * 1024)
    except safefile.UnsafeFileError as exc:
        raise EvidenceError(f"{exc} (a signed bundle carries {path.name})") from None


def load_signers(path: Path) -> list[sshsig.AllowedSigner]:
    try:
        text = safefile.read_regular(path, "allowed-signers file", 1 << 20).decode()
        return sshsig.parse_allowed_signers(text, str(path))
    except safefile.UnsafeFileError as exc:
        raise EvidenceError(str(exc)) from None
    except UnicodeDecodeError:
        raise EvidenceError(f"{path}: not a text file (an allowed-signers file is text)") from None
    except sshsig.SshsigError as exc:
        raise EvidenceError(str(exc)) from None


def verify_bundle(root: Path, signers_file: Path) -> tuple[dict[str, Any], str]:
    """BUNDLE.json of `root`, its signature checked against `signers_file` only, as signed by
    the gateway it names (principal = gateway id). Returns (bundle, sha256 of BUNDLE.json)."""
    signers = load_signers(signers_file)
    bundle, raw = read_json(root / BUNDLE, BUNDLE)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise EvidenceError(f"{root / BUNDLE}: not an lbm evidence bundle ({BUNDLE_FORMAT})")
    gateway = bundle.get("gateway")
    gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
    if not isinstance(gateway_id, str):
        raise EvidenceError(f"{root / BUNDLE}: names no gateway id")
    signature = read_signature(root / BUNDLE_SIG)
    try:
        sshsig.verify_allowed(signature, raw, NAMESPACE, signers, principal=gateway_id)
    except sshsig.SshsigError as exc:
        raise EvidenceError(
            f"{root / BUNDLE_SIG}: the gateway signature over {BUNDLE} is refused: {exc} "
            f"(checked against {signers_file} only)"
        ) from None
    return bundle, hashlib.sha256(raw).hexdigest()


def listed_files(doc: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The `files` list of BUNDLE.json or MANIFEST.json, every path safe and relative."""
    files = doc.get("files")
    if not isinstance(files, list):
        raise EvidenceError(f"{where}: no file list")
    for item in files:
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or not SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
            raise EvidenceError(f"{where}: lists an unsafe path {str(path)[:80]!r}")
    return files


def _tree(root: Path) -> Iterable[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *(d for d in dirnames if os.path.islink(Path(dirpath, d)))]:
            path = Path(dirpath, name)
            yield str(path.relative_to(root)), os.lstat(path)


def check_files(
    root: Path, files: list[dict[str, Any]], own: set[str], deferred: Iterable[str] = ()
) -> list[str]:
    """Problems naming every changed, missing or extra file under `root` (`own`: the files
    that carry the list and its signature, not listed in it). Files in `deferred` are only
    checked for size here: the caller hashes them as it reads them (and fails if they differ)."""
    later = set(deferred)
    problems: list[str] = []
    listed = {str(item["path"]): item for item in files}
    for rel, st in sorted(_tree(root)):
        if rel in own:
            continue
        if rel not in listed:
            problems.append(f"extra file: {rel} (not listed; added after signing)")
        elif not stat.S_ISREG(st.st_mode):
            problems.append(f"changed file: {rel} (not a regular file)")
    for rel, item in sorted(listed.items()):
        path = root / rel
        if not os.path.lexists(path):
            problems.append(f"missing file: {rel}")
            continue
        if not path.is_file() or path.is_symlink():
            continue  # reported above
        if rel in later:
            if path.stat().st_size != item.get("size"):
                problems.append(f"changed file: {rel} (size differs from the list)")
            continue
        digest, size = hash_file(path)
        if digest != item.get("sha256") or size != item.get("size"):
            problems.append(f"changed file: {rel} (SHA-256 or size differs from the list)")
    return problems


def authorisation_details(auth: Authorisation) -> dict[str, Any]:
    """The authorisation as BUNDLE.json and MANIFEST.json record it (no evidence content)."""
    app = auth.application
    return {
        "ref": auth.ref,
        "subject": app.subject,
        "case_type": app.case_type.value,
        "purposes": [p.value for p in app.purposes],
        "channels": [c.value for c in app.channels],
        "officer": app.officer.as_dict(),
        "urgent": app.urgent,
        "start": format_utc(app.start),
        "expiry": format_utc(auth.expiry),
        "cancelled_at": format_utc(auth.cancelled_at) if auth.cancelled_at else None,
        "investigators": list(auth.assignees),
        "history": [event.as_dict() for event in auth.history],
    }


def now_utc() -> datetime:
    return datetime.now(UTC)

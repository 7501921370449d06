"""Sealed segments to `[store] archive_root` (object storage), verified, then removed locally.

Run by the housekeeping daemon each pass and by `lbm archive upload` (never by the channels:
a daemon that archives only writes local files, so an outage never stalls a record). For each
sealed segment still here (NNNNNN.manifest.json written, NNNNNN.age present, no writer):

1. the local files are checked against the signed manifest (ciphertext and index SHA-256);
2. its wrapped keys are mirrored to `[store] keystore_root` when that is elsewhere
   (keystore/REF/NNNNNN.age, auth.age, auth.pub; store/keystore_remote.py);
3. ROOT/REF/NNNNNN.age, NNNNNN.index.jsonl, NNNNNN.manifest.json and the chain head of that
   moment as ROOT/REF/heads/SEQ.json are written, each once: an object already there with the
   same bytes is kept (a retry after a crash), one with other bytes is a conflict, audited
   (`archive_upload_conflict`) and the local copy stays; archives are never rewritten in place,
   so a write-once (object lock) bucket works;
4. each object is read back and its SHA-256 compared;
5. only then NNNNNN.uploaded records the hashes and the local .age and .index.jsonl are removed.

The manifests and chain.json stay here too (signed metadata, no content): the next segment's
manifest chains to them while the store is down. A failure leaves the segment for the next pass
and is counted; run/archive-upload.json holds the counts (no reference or name) for `lbm status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store import ArchiveError, KeyError_, StoreError
from store.actor import current_actor
from store.audit import Action, AuditLog
from store.fsutil import atomic_write, fsync_dir, try_lock
from store.keys import KeyStore
from store.keystore_remote import check_store_roots, open_store_root
from store.objectstore import StoreRoot, is_object_uri
from store.paths import DataPaths
from store.segment import is_live, segment_numbers

CHUNK = 1 << 20
STATE = "archive-upload.json"


class UploadConflict(ArchiveError):
    """An object of the archive exists in the store with other bytes: never overwritten."""


def archive_is_remote(paths: DataPaths) -> bool:
    """True when sealed segments go elsewhere than archive/ (an s3:// or other local root)."""
    uri = paths.store_settings.archive_root
    return is_object_uri(uri) or os.path.realpath(uri) != os.path.realpath(paths.archive)


def keystore_is_remote(paths: DataPaths) -> bool:
    """True when `[store] keystore_root` is elsewhere than keystore/ (its copies need shreds
    finished by the upload pass even when the archive root is local)."""
    uri = paths.store_settings.keystore_root
    return is_object_uri(uri) or os.path.realpath(uri) != os.path.realpath(paths.keystore)


def open_archive_root(paths: DataPaths) -> StoreRoot:
    settings = paths.store_settings
    return open_store_root(settings.archive_root, settings.s3)


def _sha256_stream(stream: Any) -> str:
    h = hashlib.sha256()
    while block := stream.read(CHUNK):
        h.update(block)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return _sha256_stream(fh)


def remote_sha256(root: StoreRoot, path: str) -> str | None:
    """SHA-256 of an object, or None if there is none."""
    import pyarrow.fs as pafs

    if root.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with root.fs.open_input_stream(path) as fh:
        return _sha256_stream(fh)


def put_once(root: StoreRoot, path: str, local: Path, want: str) -> bool:
    """Write `local` (SHA-256 `want`) to `path` unless it is there already; raises
    UploadConflict if another object is there; reads the result back. True if written."""
    have = remote_sha256(root, path)
    if have == want:
        return False
    if have is not None:
        raise UploadConflict(f"{path}: exists in the archive store with other content")
    if not root.remote:
        root.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with local.open("rb") as src, root.fs.open_output_stream(path) as out:
        while block := src.read(CHUNK):
            out.write(block)
    back = remote_sha256(root, path)
    if back != want:
        raise ArchiveError(f"{path}: read back {'nothing' if back is None else 'other bytes'}")
    return True


@dataclass
class UploadResult:
    uploaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # segment ids (for the audit log only)
    conflicts: int = 0
    pending: int = 0  # sealed segments still awaiting upload after this pass
    remote_shreds: int = 0
    error: str | None = None  # why nothing was tried (configuration, unreachable)

    def counts(self) -> dict[str, int]:
        return {
            "uploaded": len(self.uploaded),
            "failed": len(self.failed),
            "conflicts": self.conflicts,
            "pending": self.pending,
            "remote_shreds": self.remote_shreds,
        }


def _upload_lock(directory: Path) -> contextlib.AbstractContextManager[bool]:
    """One uploader per archive at a time (non-blocking; the writers' lock is not taken)."""
    return try_lock(directory / ".upload.lock")


def sealed_local(paths: DataPaths) -> list[tuple[str, int]]:
    """(ref, segment) of every sealed segment whose ciphertext is still here."""
    out: list[tuple[str, int]] = []
    if not paths.archive.is_dir():
        return out
    for directory in sorted(p for p in paths.archive.iterdir() if p.is_dir()):
        for n in segment_numbers(directory):
            if (directory / f"{n:06d}.manifest.json").exists() and not is_live(
                directory / f"{n:06d}.age"
            ):
                out.append((directory.name, n))
    return out


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((run_dir / STATE).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class ArchiveUploader:
    def __init__(
        self,
        paths: DataPaths,
        *,
        audit: AuditLog | None = None,
        actor: str | None = None,
        root: StoreRoot | None = None,
    ) -> None:
        self.paths = paths
        self.audit = audit
        self.actor = actor or current_actor()
        self._root = root
        self.keystore = KeyStore(paths, audit=audit, actor=self.actor)

    @property
    def root(self) -> StoreRoot:
        if self._root is None:
            self._root = open_archive_root(self.paths)
        return self._root

    def run(self) -> UploadResult:
        """One pass: remote shreds left pending, then every sealed local segment."""
        result = UploadResult()
        # a local archive root: nothing to upload, but shreds of the keystore root's copies
        todo = sealed_local(self.paths) if archive_is_remote(self.paths) else []
        try:
            self._retry_shreds(result)  # before the check: a refused keystore is still shredded
            check_store_roots(self.paths.store_settings)
            if (mirror := self.keystore.mirror()) is not None:
                self.keystore.sync_rewrapped(mirror)
        except (StoreError, OSError) as exc:
            result.error = str(exc)
            result.failed = [f"{r}/{n:06d}" for r, n in todo]
        else:
            for ref, number in todo:
                self._one(ref, number, result)
        result.pending = len(sealed_local(self.paths))
        self._save_state(result)
        return result

    def _retry_shreds(self, result: UploadResult) -> None:
        mirror = self.keystore.mirror(checked=False)
        if mirror is None:
            return
        for ref, name in self.keystore.pending_remote_shreds():
            if name == "*":
                result.remote_shreds += mirror.delete_all(ref)
            elif mirror.delete(ref, name):
                result.remote_shreds += 1

    def _one(self, ref: str, number: int, result: UploadResult) -> None:
        sid = f"{ref}/{number:06d}"
        directory = self.paths.archive / ref
        try:
            with _upload_lock(directory) as mine:
                if not mine or not (directory / f"{number:06d}.age").exists():
                    return
                self.upload_segment(ref, number)
            result.uploaded.append(sid)
        except UploadConflict as exc:
            result.conflicts += 1
            result.failed.append(sid)
            if self.audit is not None:
                self.audit.append(
                    Action.ARCHIVE_UPLOAD_CONFLICT,
                    self.actor,
                    refs=(ref,),
                    segment=sid,
                    error=str(exc),
                    archive_root=self.paths.store_settings.archive_root,
                )
        except (ArchiveError, KeyError_, StoreError, OSError, ValueError):
            result.failed.append(sid)

    def upload_segment(self, ref: str, number: int) -> dict[str, str]:
        """Steps 1-5 of the module doc for one sealed segment. Returns the objects' hashes."""
        directory = self.paths.archive / ref
        name = f"{number:06d}"
        manifest_path = directory / f"{name}.manifest.json"
        manifest = json.loads(manifest_path.read_bytes())
        files = {
            f"{name}.age": directory / f"{name}.age",
            f"{name}.index.jsonl": directory / f"{name}.index.jsonl",
            f"{name}.manifest.json": manifest_path,
        }
        hashes = {n: _sha256_file(p) for n, p in files.items() if p.exists()}
        expected = {
            f"{name}.age": manifest.get("ciphertext_sha256"),
            f"{name}.index.jsonl": manifest.get("index_sha256"),
        }
        for n, want in expected.items():
            if want is not None and hashes.get(n) != want:
                raise ArchiveError(f"{ref}/{n}: does not match its signed manifest; not uploaded")
        self._mirror_keys(ref, number)
        for n, h in hashes.items():
            put_once(self.root, self.root.path(ref, n), files[n], h)
        head = directory / "chain.json"
        head_data = head.read_bytes()
        seq = int(json.loads(head_data)["seq"])
        head_hash = hashlib.sha256(head_data).hexdigest()
        snapshot = directory / f".head-{os.getpid()}.json"
        try:
            snapshot.write_bytes(head_data)
            head_object = self.root.path(ref, "heads", f"{seq:06d}.json")
            put_once(self.root, head_object, snapshot, head_hash)
        finally:
            snapshot.unlink(missing_ok=True)
        record = {"objects": hashes, "archive_root": self.paths.store_settings.archive_root}
        atomic_write(directory / f"{name}.uploaded", json.dumps(record, sort_keys=True).encode())
        for n in (f"{name}.age", f"{name}.index.jsonl"):
            (directory / n).unlink(missing_ok=True)
        fsync_dir(directory)
        if self.audit is not None:
            self.audit.append(
                Action.ARCHIVE_UPLOAD,
                self.actor,
                refs=(ref,),
                segment=f"{ref}/{name}",
                objects=hashes,
                archive_root=self.paths.store_settings.archive_root,
            )
        return hashes

    def _mirror_keys(self, ref: str, number: int) -> None:
        mirror = self.keystore.mirror()
        if mirror is None:
            return
        seg_key = self.keystore.segment_key_path(ref, number)
        for path in (seg_key, self.keystore.auth_key_path(ref), self.keystore.auth_pub_path(ref)):
            if path.exists():
                mirror.put(ref, path.name, path.read_bytes())

    def _save_state(self, result: UploadResult) -> None:
        state = read_state(self.paths.run)
        state["failures_total"] = int(state.get("failures_total", 0)) + len(result.failed)
        state["conflicts_total"] = int(state.get("conflicts_total", 0)) + result.conflicts
        state["uploaded_total"] = int(state.get("uploaded_total", 0)) + len(result.uploaded)
        state["pending"] = result.pending
        state["failing"] = bool(result.failed or result.error)
        with contextlib.suppress(OSError):
            self.paths.run.mkdir(parents=True, exist_ok=True)
            atomic_write(self.paths.run / STATE, json.dumps(state, sort_keys=True).encode())


def delete_remote_archive(paths: DataPaths) -> Any:
    """A deleter for retention: `fn(ref) -> int` removes ROOT/REF/ objects where the bucket
    allows it (a write-once bucket refuses until its retention ends: the keys are shredded
    anyway). None when the archive root is local."""
    if not archive_is_remote(paths):
        return None

    def delete(ref: str) -> int:
        import pyarrow.fs as pafs

        root = open_archive_root(paths)
        selector = pafs.FileSelector(root.path(ref), recursive=True, allow_not_found=True)
        done = 0
        for info in root.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                with contextlib.suppress(OSError):
                    root.fs.delete_file(info.path)
                    done += 1
        return done

    return delete

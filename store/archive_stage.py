"""Read archives that live on object storage with the code that reads archive/.

    with staged_paths(app.paths, [ref]) as paths:   # paths.archive/REF holds every file
        verify_all(paths.archive, keys, ref)

When `[store] archive_root` is the local archive/ itself, `staged_paths` yields the paths
unchanged. Otherwise it makes a private working directory (0700, inside the data directory,
which is 0700 too) whose `archive/REF/` holds the local files of REF (segments not uploaded yet,
manifests, chain head) plus every object of ROOT/REF/ missing here (uploaded segments, their
indexes and manifests; the newest `heads/SEQ.json` as chain.json when there is no local head),
and whose other entries are symlinks to the data directory's own (keystore/, keys/, audit/,
registry...). Only ciphertext, signed manifests and plaintext indexes (no content) are copied;
the directory is removed on exit, whatever happens. Nothing is ever decrypted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from store import ArchiveError
from store.archive_upload import CHUNK, archive_is_remote, open_archive_root
from store.fsutil import fsync_dir
from store.keys import check_ref
from store.objectstore import StoreRoot
from store.paths import DataPaths

OBJECT_RE = re.compile(r"^\d{6,9}\.(?:age|index\.jsonl|manifest\.json)$")
HEAD_RE = re.compile(r"^(\d{6,9})\.json$")
STAGE_PREFIX = ".archive-stage-"


def remote_refs(root: StoreRoot) -> list[str]:
    """The references with objects under the archive root."""
    import pyarrow.fs as pafs

    infos = root.fs.get_file_info(pafs.FileSelector(root.base, allow_not_found=True))
    refs = []
    for info in infos:
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory:
            with contextlib.suppress(Exception):
                refs.append(check_ref(name))
    return sorted(refs)


def _download(root: StoreRoot, path: str, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, root.fs.open_input_stream(path) as src:
        while block := src.read(CHUNK):
            out.write(block)


def _stage_ref(paths: DataPaths, root: StoreRoot, ref: str, target: Path) -> None:
    import pyarrow.fs as pafs

    os.mkdir(target, 0o700)
    local = paths.archive / ref
    if local.is_dir():
        for entry in os.scandir(local):
            name = entry.name
            if entry.is_file() and not name.startswith(".") and not name.endswith(".uploaded"):
                shutil.copyfile(entry.path, target / name)
    selector = pafs.FileSelector(root.path(ref), recursive=True, allow_not_found=True)
    heads: dict[int, str] = {}
    for info in root.fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root.path(ref)) :].strip("/")
        if OBJECT_RE.fullmatch(rel):
            if not (target / rel).exists():
                _download(root, info.path, target / rel)
        elif rel.startswith("heads/") and (m := HEAD_RE.fullmatch(rel[len("heads/") :])):
            heads[int(m.group(1))] = info.path
    if heads and not (target / "chain.json").exists():
        _download(root, heads[max(heads)], target / "chain.json")


@contextlib.contextmanager
def staged_paths(paths: DataPaths, refs: Iterable[str] | None = None) -> Iterator[DataPaths]:
    """`paths` whose archive/ has the object store's copies of `refs` (None: every archive).
    Raises ArchiveError (naming the root, never credentials) if the store cannot be read."""
    if not archive_is_remote(paths):
        yield paths
        return
    work = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=paths.root))
    try:
        os.chmod(work, 0o700)
        for entry in os.scandir(paths.root):
            if entry.name != "archive" and not entry.name.startswith(STAGE_PREFIX):
                os.symlink(entry.path, work / entry.name)
        os.mkdir(work / "archive", 0o700)
        uri = paths.store_settings.archive_root
        try:
            root = open_archive_root(paths)
            wanted = sorted(set(refs)) if refs is not None else None
            if wanted is None:
                local = (
                    [p.name for p in paths.archive.iterdir() if p.is_dir()]
                    if paths.archive.is_dir()
                    else []
                )
                wanted = sorted(set(local) | set(remote_refs(root)))
            for ref in wanted:
                _stage_ref(paths, root, check_ref(ref), work / "archive" / ref)
        except OSError as exc:
            raise ArchiveError(f"archive root {uri}: cannot read it: {exc}") from None
        for ref_dir in (work / "archive").iterdir():  # an archive with nothing in it: absent
            if not any(ref_dir.iterdir()):
                ref_dir.rmdir()
        yield DataPaths(work, store=paths.store)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _uploaded(paths: DataPaths, ref: str, number: int) -> dict[str, str] | None:
    """The object hashes NNNNNN.uploaded records, or None if the segment is not uploaded."""
    try:
        record = json.loads((paths.archive / ref / f"{number:06d}.uploaded").read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ArchiveError(f"{ref}/{number:06d}.uploaded: unreadable") from None
    objects = record.get("objects") if isinstance(record, dict) else None
    return {str(k): str(v) for k, v in objects.items()} if isinstance(objects, dict) else {}


def uploaded_index(paths: DataPaths, ref: str, number: int) -> bytes | None:
    """An uploaded segment's plaintext index (no content) read from the store, checked
    against its recorded hash; None if the segment was not uploaded."""
    objects = _uploaded(paths, ref, number)
    name = f"{number:06d}.index.jsonl"
    if objects is None or name not in objects:
        return None
    root = open_archive_root(paths)
    try:
        with root.fs.open_input_stream(root.path(ref, name)) as fh:
            data = bytes(fh.read())
    except OSError as exc:
        raise ArchiveError(f"{ref}/{name}: cannot read it from the archive store: {exc}") from None
    if hashlib.sha256(data).hexdigest() != objects[name]:
        raise ArchiveError(f"{ref}/{name}: the archive store's copy does not match its upload")
    return data


def restore_segment(paths: DataPaths, ref: str, number: int) -> bool:
    """Bring an uploaded segment's ciphertext and index back into archive/REF (each checked
    against the hashes of its upload) and drop its NNNNNN.uploaded, for a collateral removal
    that must read it. The next upload pass finds the same objects in the store and removes
    the local copy again; nothing in the store is rewritten. True if something was restored."""
    directory = paths.archive / ref
    objects = _uploaded(paths, ref, number)
    if objects is None:
        return False
    root = open_archive_root(paths)
    for name in (f"{number:06d}.age", f"{number:06d}.index.jsonl"):
        target = directory / name
        if name not in objects or target.exists():
            continue
        part = directory / f".{name}.restore-{os.getpid()}"
        part.unlink(missing_ok=True)
        try:
            _download(root, root.path(ref, name), part)
            with part.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            if digest != objects[name]:
                raise ArchiveError(f"{ref}/{name}: the archive store's copy does not match")
            os.rename(part, target)
        except OSError as exc:
            raise ArchiveError(f"{ref}/{name}: cannot restore it from the store: {exc}") from None
        finally:
            part.unlink(missing_ok=True)
    (directory / f"{number:06d}.uploaded").unlink()
    fsync_dir(directory)
    return True


def index_lines(paths: DataPaths, ref: str, number: int) -> list[dict[str, Any]]:
    """A segment's index lines: the local file, else (uploaded) the store's copy."""
    path = paths.archive / ref / f"{number:06d}.index.jsonl"
    data = path.read_bytes() if path.exists() else uploaded_index(paths, ref, number)
    lines: list[dict[str, Any]] = []
    for raw in (data or b"").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            break  # a torn last line of a segment cut off by a crash
    return lines

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
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from store import ArchiveError
from store.archive_upload import CHUNK, archive_is_remote, open_archive_root
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

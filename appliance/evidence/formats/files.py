"""Private output files for the export formats: 0600 files, 0700 directories, hashed as written.

`OutFile` is created with O_EXCL (an export never overwrites anything) under the export's
output directory, keeps a running SHA-256 and size of what it wrote, and gives a `WrittenFile`
at close; nothing is read back to hash it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


class FormatError(ValueError):
    """A record header or call sequence the export cannot use (names the record id)."""


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the output directory, e.g. "web/flows.mitm"
    sha256: str
    size: int
    record_ids: list[str] = field(default_factory=list)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with exactly 0700; an existing directory is left as it is."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)


def safe_name(record_id: str) -> str:
    """A record id `REF/000001/3` as one path component: `REF_000001_3`."""
    name = record_id.replace("/", "_")
    if not name or name.startswith(".") or any(c in name for c in "\0\\") or len(name) > 200:
        raise FormatError(f"record id {record_id!r} cannot name a file")
    return name


class OutFile:
    """A new 0600 file under `root` at relative path `rel`, hashed as it is written."""

    def __init__(self, root: Path, rel: str) -> None:
        self.rel = rel
        self.record_ids: list[str] = []
        path = root / rel
        if root.resolve() not in path.resolve().parents:
            raise FormatError(f"{rel}: outside the output directory")
        ensure_private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except FileExistsError:
            raise FormatError(f"{rel}: exists already in the output directory") from None
        os.fchmod(fd, FILE_MODE)
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def close(self) -> WrittenFile:
        if not self._fh.closed:  # durable at ExportSet.close (one sync, not one per file)
            self._fh.close()
        return WrittenFile(self.rel, self._hash.hexdigest(), self.size, list(self.record_ids))

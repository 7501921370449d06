"""A stand-in for `appliance.evidence.formats.ExportSet` (branch `formats`): each record's exact
bytes in its own file, `raw/NNNNNN/N.EXT`, used only while the formats package is absent. Same
interface: begin(header), data(chunk)..., end(complete), close() -> list of written files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.evidence.bundle_common import create_file, make_dirs

KIND_SUFFIX = {"pcapng": ".pcapng", "message": ".eml", "request": ".http", "response": ".http"}


@dataclass(frozen=True)
class WrittenFile:
    path: str
    sha256: str
    size: int
    record_ids: list[str]


class ExportSink(Protocol):
    """What opening.py feeds records to (formats.ExportSet or RawExportSet)."""

    def begin(self, header: dict[str, Any]) -> None: ...

    def data(self, chunk: bytes) -> None: ...

    def end(self, complete: bool) -> None: ...

    def close(self) -> list[Any]: ...


@dataclass
class _Current:
    fd: int
    rel: str
    record_id: str
    sha: Any = field(default_factory=hashlib.sha256)
    size: int = 0


class RawExportSet:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.incomplete: list[str] = []
        self._written: list[WrittenFile] = []
        self._current: _Current | None = None

    def begin(self, header: dict[str, Any]) -> None:
        record_id = str(header["id"])
        _ref, segment, n = record_id.rsplit("/", 2)
        suffix = KIND_SUFFIX.get(str(header.get("kind")), ".bin")
        rel = f"raw/{int(segment):06d}/{int(n)}{suffix}"
        make_dirs((self.out_dir / rel).parent)
        self._current = _Current(create_file(self.out_dir / rel), rel, record_id)

    def data(self, chunk: bytes) -> None:
        cur = self._current
        assert cur is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(cur.fd, view) :]
        cur.sha.update(chunk)
        cur.size += len(chunk)

    def end(self, complete: bool) -> None:
        cur = self._current
        assert cur is not None
        os.close(cur.fd)  # opening.py fsyncs every file once, at the end
        self._current = None
        if not complete:
            self.incomplete.append(cur.record_id)
        self._written.append(WrittenFile(cur.rel, cur.sha.hexdigest(), cur.size, [cur.record_id]))

    def close(self) -> list[WrittenFile]:
        if self._current is not None:
            self.end(False)
        return list(self._written)


def export_set(out_dir: Path) -> ExportSink:
    """The formats package's ExportSet when it is installed, else the raw stand-in."""
    try:
        from appliance.evidence.formats import ExportSet  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return RawExportSet(out_dir)
    sink: ExportSink = ExportSet(out_dir)
    return sink

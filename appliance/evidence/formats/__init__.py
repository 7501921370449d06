"""Export formats: plaintext files from decrypted archive records (docs/export-formats.md).

`ExportSet` is fed one record at a time, as the framing reader yields it (`begin(header)`,
`data(chunk)`..., `end(complete)`), and routes each record by its header's `channel` to that
channel's writer: web to a mitmproxy flow file and HAR 1.2 (`web`), email to one `.eml` per
message and one mbox (`mail`), packets to one pcapng (`packets`). A record of a channel or kind
none of them knows is written as it is to `other/ID.bin`, so nothing is dropped silently.
Everything goes under `out_dir`: files 0600, directories 0700, never overwriting a file.
`close()` lists every file written with its SHA-256, size and the record ids it holds;
`incomplete` lists the ids of records that ended cut off or aborted (`end(False)`), which are
still written as far as they go.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from appliance.evidence.formats.files import (
    FormatError,
    OutFile,
    WrittenFile,
    ensure_private_dir,
    safe_name,
)

__all__ = ["ExportSet", "FormatError", "WrittenFile"]


class ChannelWriter(Protocol):
    damaged: list[str]  # ids of records the format could not take whole (bad framing inside)

    def begin(self, header: dict[str, Any]) -> None: ...
    def data(self, chunk: bytes) -> None: ...
    def end(self, complete: bool) -> None: ...
    def close(self) -> list[WrittenFile]: ...


class RawWriter:
    """Records no format knows: each one as it is, `other/ID.bin`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.damaged: list[str] = []
        self._current: OutFile | None = None
        self._done: list[WrittenFile] = []

    def begin(self, header: dict[str, Any]) -> None:
        self._current = OutFile(self.out_dir, f"other/{safe_name(header['id'])}.bin")
        self._current.record_ids.append(header["id"])

    def data(self, chunk: bytes) -> None:
        assert self._current is not None
        self._current.write(chunk)

    def end(self, complete: bool) -> None:
        assert self._current is not None
        self._done.append(self._current.close())
        self._current = None

    def close(self) -> list[WrittenFile]:
        return self._done


def _writer_for(channel: str, out_dir: Path) -> ChannelWriter:
    # imported here so that the formats a bundle does not hold are never loaded
    if channel == "web":
        from appliance.evidence.formats.web import WebWriter

        return WebWriter(out_dir)
    if channel == "email":
        from appliance.evidence.formats.mail import MailWriter

        return MailWriter(out_dir)
    if channel == "packets":
        from appliance.evidence.formats.packets import PacketsWriter

        return PacketsWriter(out_dir)
    return RawWriter(out_dir)


class ExportSet:
    """Writes the plaintext export of a stream of records under `out_dir` (see module doc)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        ensure_private_dir(self.out_dir)
        self.incomplete: list[str] = []
        self._writers: dict[str, ChannelWriter] = {}
        self._current: ChannelWriter | None = None
        self._current_id: str | None = None
        self._closed = False

    def begin(self, header: dict[str, Any]) -> None:
        if self._closed:
            raise FormatError("export already closed")
        if self._current is not None:
            raise FormatError(f"record {self._current_id}: begin before its end")
        record_id = header.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise FormatError("record header without an id")
        channel = header.get("channel")
        key = channel if channel in ("web", "email", "packets") else "other"
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = _writer_for(key, self.out_dir)
        writer.begin(header)
        self._current, self._current_id = writer, record_id

    def data(self, chunk: bytes) -> None:
        if self._current is None:
            raise FormatError("data outside a record")
        if chunk:
            self._current.data(chunk)

    def end(self, complete: bool) -> None:
        if self._current is None or self._current_id is None:
            raise FormatError("end outside a record")
        writer, record_id = self._current, self._current_id
        self._current = self._current_id = None
        writer.end(complete)
        if (not complete or record_id in writer.damaged) and record_id not in self.incomplete:
            self.incomplete.append(record_id)

    def close(self) -> list[WrittenFile]:
        """Finish every file and make them durable; a record still open (never ended) counts
        as incomplete."""
        if self._current is not None:
            self.end(False)
        self._closed = True
        files: list[WrittenFile] = []
        for writer in self._writers.values():
            files += writer.close()
        if files:
            os.sync()  # every file and directory entry on disk, in one call (not per file)
        return sorted(files, key=lambda f: f.path)

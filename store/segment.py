"""One archive segment on disk: the age-encrypted record stream and its plaintext index.

The plaintext inside the age file is a sequence of records (docs/archive-format.md):

    {"channel":..,"framing":"chunked","id":..,"kind":..,"length":null,"principal":..,"ts":..}\\n
    <decimal chunk length>\\n<chunk bytes>      (any number of chunks, each length > 0)
    0\\n
    {"length":<total content bytes>}\\n            (trailer; "aborted":true if the writer failed)

so a record of any size streams through without its length being known up front.
NNNNNN.index.jsonl gets one line per finished record (id, channel, kind, ts, principal,
plaintext offsets, length; never content), written as each record ends and fsynced at most
every INDEX_SYNC_SECONDS and when the segment is finished. The writer holds an
exclusive flock on the segment file until its manifest is written, so recovery in another
process can tell a live segment from one cut off by a crash.

Ciphertext goes out through store/segment_io.py, which writes it in batches and hashes it
(SHA-256, for the manifest) on a background thread while it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store import ArchiveError
from store import agefile as age
from store.framing import (  # noqa: F401  (re-exported: readers import them from here too)
    PlainStream,
    Record,
    iter_events,
    open_segment,
    read_records,
)
from store.fsutil import fsync_dir
from store.segment_io import SegmentOutput, io_message

# How often a segment's index is fsynced while records are added (and always at finish). The
# ciphertext itself is fsynced only when the segment is sealed, so an index fsync per record
# bought no durability a crash would keep (recovery compares the index with the authenticated
# prefix either way), yet it cost one disk flush per record on the web proxy's event loop: three
# per archived request, 4-5 ms each under load.
INDEX_SYNC_SECONDS = 0.25

SEGMENT_RE = re.compile(r"^(\d{6,9})\.age$")


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class RecordInfo:
    id: str
    n: int
    channel: str
    kind: str
    ts: str
    principal: str | None
    offset: int
    end: int
    length: int
    aborted: bool = False

    def index_line(self) -> bytes:
        data = dict(self.__dict__)
        if not self.aborted:
            data.pop("aborted")
        return canonical(data) + b"\n"


class SegmentWriter:
    """Writes one segment; a single record at a time (the archive serialises callers)."""

    def __init__(self, directory: Path, ref: str, number: int, fd: int, recipient: str) -> None:
        self.directory = directory
        self.ref = ref
        self.number = number
        self.name = f"{number:06d}"
        self.where = f"segment {ref}/{self.name}"
        self.path = directory / f"{self.name}.age"
        self.index_path = directory / f"{self.name}.index.jsonl"
        self.records: list[RecordInfo] = []
        self._fd = fd
        self._index_fd = -1
        self._out = SegmentOutput(fd, self.where)
        self.offset = 0
        self._current: RecordInfo | None = None
        self._index_synced = time.monotonic()
        self._index_dirty = False
        try:
            self._out.digest.open(self.path)
            self._index_fd = os.open(
                self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            self._age = age.AgeWriter(self._out, [recipient])
            os.fsync(fd)
            fsync_dir(directory)
        except OSError as exc:
            self.release()
            raise ArchiveError(f"{self.where}: cannot create segment: {io_message(exc)}") from None
        except ArchiveError:
            self.release()
            raise

    @property
    def ciphertext_bytes(self) -> int:
        return self._out.bytes

    def _plain(self, data: bytes | bytearray | memoryview) -> None:
        self._age.write(data)
        self.offset += len(data)

    def begin_record(
        self,
        channel: str,
        kind: str,
        ts: str,
        principal: str | None,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        n = len(self.records) + 1
        record_id = f"{self.ref}/{self.name}/{n}"
        header: dict[str, Any] = dict(extra or {})
        header |= {
            "id": record_id,
            "channel": channel,
            "kind": kind,
            "ts": ts,
            "principal": principal,
            "length": None,
            "framing": "chunked",
        }
        self._current = RecordInfo(record_id, n, channel, kind, ts, principal, self.offset, 0, 0)
        self._plain(canonical(header) + b"\n")
        return record_id

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._current is not None
        if not data:
            return
        self._plain(b"%d\n" % len(data))
        self._plain(data)
        self._current.length += len(data)

    def end_record(self, *, aborted: bool = False) -> RecordInfo:
        info = self._current
        assert info is not None
        trailer: dict[str, Any] = {"length": info.length}
        if aborted:
            trailer["aborted"] = True
            info.aborted = True
        self._plain(b"0\n" + canonical(trailer) + b"\n")
        info.end = self.offset
        try:
            line = info.index_line()
            view = memoryview(line)
            while view:
                view = view[os.write(self._index_fd, view) :]
            self._index_dirty = True
            if time.monotonic() - self._index_synced >= INDEX_SYNC_SECONDS:
                self.sync_index()
        except OSError as exc:
            raise ArchiveError(f"{self.where}: cannot write index: {io_message(exc)}") from None
        self.records.append(info)
        self._current = None
        return info

    def sync_index(self) -> None:
        """fsync the index now (raises OSError)."""
        if self._index_dirty:
            os.fsync(self._index_fd)
            self._index_dirty = False
        self._index_synced = time.monotonic()

    def finish(self) -> None:
        """Write the last chunk and fsync (index and ciphertext); the flock stays until
        `release`."""
        try:
            self.sync_index()
            self._age.close()
            os.fsync(self._fd)
        except OSError as exc:
            raise ArchiveError(f"{self.where}: cannot close segment: {io_message(exc)}") from None

    @property
    def ciphertext_sha256(self) -> str:
        return self._out.hexdigest()

    def release(self) -> None:
        """Close the files (dropping the flock)."""
        self._out.digest.close()  # waits until the hash worker is done with the segment
        for fd in (self._index_fd, self._fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._index_fd = -1


def segment_numbers(directory: Path) -> list[int]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            m = SEGMENT_RE.fullmatch(entry.name)
            if m:
                found.append(int(m.group(1)))
    return sorted(found)


KNOWN_RE = re.compile(r"^(\d{6,9})\.(?:age|manifest\.json|uploaded)$")


def known_segment_numbers(directory: Path) -> list[int]:
    """Every number the archive has used: segments here, sealed ones (manifest) and those
    uploaded to the object store (NNNNNN.uploaded, their local copy removed). A new segment
    never takes one of these numbers, so an uploaded object is never written again."""
    found = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            m = KNOWN_RE.fullmatch(entry.name)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def claim(directory: Path) -> tuple[int, int]:
    """Create the next NNNNNN.age exclusively and flock it. Returns (number, fd).
    Callers hold the archive directory lock, so recovery never sees it unlocked."""
    existing = known_segment_numbers(directory)
    number = (existing[-1] if existing else 0) + 1
    while True:
        if number > 999_999_999:
            raise ArchiveError(f"archive {directory.name}: segment numbers exhausted")
        path = directory / f"{number:06d}.age"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            number += 1
            continue
        except OSError as exc:
            raise ArchiveError(
                f"archive {directory.name}: cannot create segment {number:06d}: {io_message(exc)}"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return number, fd


def is_live(path: Path) -> bool:
    """True if a writer holds the segment's flock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

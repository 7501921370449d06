"""Reading a segment's plaintext framing (written by store/segment.py; docs/archive-format.md).

`open_segment` unwraps a segment key in memory with an investigator's (or custodian's) identity
and returns a verifying age reader; `iter_events` turns the decrypted stream into record events
without holding a record in memory; `read_records` collects them (tests, small segments).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from store import ArchiveError
from store import agefile as age
from store.keys import KeyStore, check_ref
from store.paths import DataPaths


class PlainStream:
    """A read(n) interface over an iterator of decrypted chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._eof = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._eof = True

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readline(self, limit: int = 1 << 20) -> bytes:
        while True:
            pos = self._buf.find(b"\n", 0, limit)
            if pos >= 0:
                return self.read(pos + 1)
            if self._eof or len(self._buf) >= limit:
                return self.read(min(len(self._buf), limit))
            self._fill(len(self._buf) + 65536)


Event = tuple[str, Any]


def iter_events(stream: PlainStream | BinaryIO) -> Iterator[Event]:
    """Parse the framing into ("header", dict), ("data", bytes)..., ("end", trailer dict).

    A stream that stops inside a record yields ("cut", header) instead of "end"; malformed
    framing raises ArchiveError naming the plaintext offset.
    """
    offset = 0
    while True:
        line = stream.readline(1 << 20)
        if not line:
            return
        header_at = offset
        offset += len(line)
        if not line.endswith(b"\n"):
            yield "cut", None
            return
        try:
            header = json.loads(line)
            assert isinstance(header, dict) and "id" in header
        except (ValueError, AssertionError):
            raise ArchiveError(f"plaintext offset {header_at}: not a record header") from None
        yield "header", header
        while True:
            size_line = stream.readline(32)
            offset += len(size_line)
            if not size_line.endswith(b"\n"):
                yield "cut", header
                return
            try:
                size = int(size_line)
            except ValueError:
                size = -1
            if size < 0:
                raise ArchiveError(
                    f"plaintext offset {offset - len(size_line)}: bad chunk "
                    f"length in record {header['id']}"
                )
            if size == 0:
                break
            remaining = size
            while remaining:
                piece = stream.read(min(remaining, 1 << 20))
                if not piece:
                    yield "cut", header
                    return
                remaining -= len(piece)
                offset += len(piece)
                yield "data", piece
        trailer_line = stream.readline(1 << 16)
        offset += len(trailer_line)
        if not trailer_line.endswith(b"\n"):
            yield "cut", header
            return
        try:
            trailer = json.loads(trailer_line)
        except ValueError:
            raise ArchiveError(f"record {header['id']}: bad trailer") from None
        yield "end", trailer


@dataclass
class Record:
    header: dict[str, Any]
    data: bytes
    trailer: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.trailer is not None and not self.trailer.get("aborted")


def read_records(stream: PlainStream | BinaryIO) -> list[Record]:
    """Every record in memory (tests and small segments; exports use iter_events)."""
    records: list[Record] = []
    parts: list[bytes] = []
    for kind, value in iter_events(stream):
        if kind == "header":
            parts = []
            records.append(Record(value, b"", None))
        elif kind == "data":
            parts.append(value)
        elif value is not None:
            records[-1].data = b"".join(parts)
            if kind == "end":
                records[-1].trailer = value
    return records


def open_segment(
    paths: DataPaths, ref: str, number: int, identity_text: str, *, allow_truncated: bool = True
) -> tuple[age.AgeReader, BinaryIO]:
    """For investigators: unwrap the segment key in memory with an investigator (or custodian)
    identity and return (reader, open file); iterate `iter_events(PlainStream(
    reader.chunks()))`, then close the file. `reader.truncated` tells a cut-off segment."""
    keystore = KeyStore(paths)
    segment_key = keystore.unwrap_segment(
        ref, number, keystore.unwrap_authorisation(ref, identity_text)
    )
    path = paths.archive / check_ref(ref) / f"{number:06d}.age"
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ArchiveError(f"segment {ref}/{number:06d}: {exc.strerror}") from None
    try:
        return age.AgeReader(fh, [segment_key], allow_truncated=allow_truncated), fh
    except age.AgeError as exc:
        fh.close()
        raise ArchiveError(f"segment {ref}/{number:06d}: {exc}") from None

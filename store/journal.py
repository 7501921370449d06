"""The metadata write-ahead journal: journal/WRITER.journal, append-only, fsynced at each flush.

A row is *accepted* once the frame holding it is in the journal and the journal is fsynced. The
journal is replayed into Parquet when the writer starts, and emptied (given a new generation)
once everything in it is durable in Parquet.

Framing (all integers little-endian)::

    frame   = magic "LBJ1" | kind u8 | seq u64 | length u32 | crc32 u32 | payload[length]
    crc32   = zlib.crc32(kind | seq | length | payload)
    kind 0  = file header, seq 0, payload = 16-byte generation id (random per emptying)
    kind 1  = batch, seq 1, 2, ... within a generation,
              payload = stream-name length u8 | stream name | Arrow IPC stream (zstd)

A torn tail (a crash in the middle of an append) fails the length or CRC check and ends the
readable prefix: `read_frames` stops there and reports how many bytes it left.
The file is locked with an exclusive `flock` for the writer's lifetime, so a second process
using the same writer name fails at once instead of interleaving frames. It is mode 0600 (its
directory 0700) whatever the umask.

Test seam: `Journal.io_hook`, when set, is called with "write" or "fsync" just before each
write and fsync of the journal, in the thread doing the I/O. Tests set it to a function that
blocks, standing for a disk that stops answering (no FUSE or device-mapper delay is available
to them); nothing else sets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from store import StoreError
from store.fsutil import fsync_dir
from store.private_files import FILE_MODE, make_private_dirs

MAGIC = b"LBJ1"
_HEAD = struct.Struct("<4sBQII")
HEAD_SIZE = _HEAD.size
KIND_HEADER = 0
KIND_BATCH = 1
MAX_PAYLOAD = 0xFFFFFFFF
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class JournalError(StoreError):
    """The journal could not be opened, locked, written or decoded."""


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


def _crc(kind: int, seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<BQI", kind, seq, len(payload))))


def encode_frame(kind: int, seq: int, payload: bytes) -> bytes:
    """One frame's bytes."""
    if not 0 <= kind <= 255 or not 0 <= seq < 2**64 or len(payload) > MAX_PAYLOAD:
        raise JournalError("journal frame out of range (kind, seq or payload size)")
    return _HEAD.pack(MAGIC, kind, seq, len(payload), _crc(kind, seq, payload)) + payload


def read_frames(stream: BinaryIO) -> Iterator[Frame]:
    """Yield every whole, CRC-valid frame from the start; stop at the first bad or torn one.

    The number of bytes read past the last good frame is available as the generator's return
    value (`StopIteration.value`); use `scan_frames` to get it directly.
    """
    while True:
        head = stream.read(HEAD_SIZE)
        if len(head) < HEAD_SIZE:
            return
        magic, kind, seq, length, crc = _HEAD.unpack(head)
        if magic != MAGIC:
            return
        payload = stream.read(length)
        if len(payload) < length or _crc(kind, seq, payload) != crc:
            return
        yield Frame(kind, seq, payload)


def scan_frames(data: bytes) -> tuple[list[Frame], int]:
    """Decode `data`: (the valid frames, length of the valid prefix in bytes)."""
    frames: list[Frame] = []
    end = 0
    buf = io.BytesIO(data)
    for frame in read_frames(buf):
        frames.append(frame)
        end += HEAD_SIZE + len(frame.payload)
    return frames, end


def encode_batches(stream: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> bytes:
    """A batch frame's payload: the stream name and the batches as one Arrow IPC stream."""
    name = stream.encode()
    sink = io.BytesIO()
    sink.write(bytes([len(name)]) + name)
    with pa.ipc.new_stream(sink, schema, options=_IPC_OPTIONS) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def decode_batches(payload: bytes) -> tuple[str, list[pa.RecordBatch]]:
    """Inverse of `encode_batches`."""
    try:
        size = payload[0]
        stream = payload[1 : 1 + size].decode()
        reader = pa.ipc.open_stream(pa.py_buffer(payload[1 + size :]))
        return stream, list(reader)
    except (IndexError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise JournalError(f"journal batch frame does not decode: {type(exc).__name__}") from None


class Journal:
    """An open, locked journal file. Not thread-safe: the metadata engine serialises calls."""

    #: Test seam at the I/O boundary (see the module docstring); None in production.
    io_hook: Callable[[str], None] | None = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_private_dirs(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        self._fd = os.open(self.path, flags, FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise JournalError(
                f"{self.path} is locked: another process is running metadata writer "
                f"{self.path.stem!r}; each writer name may run once"
            ) from None
        os.fchmod(self._fd, FILE_MODE)
        fsync_dir(self.path.parent)
        self.generation = b""
        self.next_seq = 1
        self.discarded = 0

    def read(self) -> list[Frame]:
        """The batch frames of the current generation (header checked, torn tail ignored).

        Sets `generation`, `next_seq` and `discarded` (bytes after the valid prefix).
        """
        with open(self.path, "rb") as fh:
            data = fh.read()
        frames, end = scan_frames(data)
        self.discarded = len(data) - end
        if not frames or frames[0].kind != KIND_HEADER or len(frames[0].payload) != 16:
            # Empty, or torn while being emptied: nothing in it was ever accepted.
            self.generation = b""
            self.discarded = len(data)
            return []
        self.generation = frames[0].payload
        batches = [f for f in frames[1:] if f.kind == KIND_BATCH]
        self.next_seq = (batches[-1].seq + 1) if batches else 1
        return batches

    def reset(self) -> bytes:
        """Empty the journal and start a new generation; returns the new generation id.

        Call only once every frame in it is durable elsewhere. A crash half-way leaves an empty
        or headerless file, which reads as "nothing to replay".
        """
        generation = secrets.token_bytes(16)
        os.ftruncate(self._fd, 0)
        self._write(encode_frame(KIND_HEADER, 0, generation))
        self._fsync()
        self.generation = generation
        self.next_seq = 1
        self.discarded = 0
        return generation

    def append(self, payloads: list[bytes]) -> int:
        """Append batch frames and fsync; returns the seq of the last one (0 if none)."""
        if not payloads:
            return self.next_seq - 1
        if not self.generation:
            self.reset()
        first = self.next_seq
        data = b"".join(
            encode_frame(KIND_BATCH, first + i, payload) for i, payload in enumerate(payloads)
        )
        before = self.size()
        try:
            self._write(data)
            self._fsync()
        except OSError as exc:
            # Cut off whatever part of the append landed, so later frames are not hidden
            # behind a torn one.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise JournalError(f"cannot append to {self.path}: {exc.strerror}") from None
        self.next_seq = first + len(payloads)
        return self.next_seq - 1

    def _fsync(self) -> None:
        if self.io_hook is not None:
            self.io_hook("fsync")
        os.fsync(self._fd)

    def _write(self, data: bytes) -> None:
        if self.io_hook is not None:
            self.io_hook("write")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1

"""Reading a bundle's segments for opening.py: the ciphertext hashed as it is read, the
plaintext handed on a chunk at a time, and the progress bar (rich, on stderr when a terminal)."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


class HashingFile:
    """A read-only file that hashes all of itself while the age reader reads it.

    The file is read in BLOCK pieces; each piece is hashed on a helper thread (SHA-256 releases
    the GIL for the whole piece, so it runs beside the decryption, which holds it: one
    hand-over per 4 MiB, not per 64 KiB chunk) and served to `read`/`readline` from memory. At
    most a few pieces are in flight, so memory stays flat. `finish()` hashes the rest of the
    file too and returns the SHA-256 of all of it."""

    BLOCK = 4 << 20

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self._digest: str | None = None
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=3)
        self._thread = threading.Thread(target=self._hash, name="lbm-open-hash", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (block := self._queue.get()) is not None:
            self.sha.update(block)

    def _refill(self) -> bool:
        if self._eof:
            return False
        block = self._fh.read(self.BLOCK)
        if not block:
            self._eof = True
            return False
        self._queue.put(block)
        self._buf, self._pos = block, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        parts: list[bytes] = []
        while n > 0:
            if self._pos >= len(self._buf) and not self._refill():
                break
            piece = self._buf[self._pos : self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, limit: int = -1) -> bytes:
        if limit < 0:
            limit = 1 << 62
        parts: list[bytes] = []
        while limit > 0:
            if self._pos >= len(self._buf) and not self._refill():
                break
            stop = self._buf.find(b"\n", self._pos, self._pos + limit)
            end = stop + 1 if stop >= 0 else min(len(self._buf), self._pos + limit)
            parts.append(self._buf[self._pos : end])
            limit -= end - self._pos
            self._pos = end
            if stop >= 0:
                break
        return b"".join(parts)

    def close(self) -> None:
        self.finish()
        self._fh.close()

    def finish(self) -> str:
        """Hash the rest of the file; the SHA-256 of all of it."""
        if self._digest is None:
            while self._refill():
                pass
            self._buf = b""
            self._queue.put(None)
            self._thread.join()
            self._digest = self.sha.hexdigest()
        return self._digest


class ProgressBar:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar: Progress | None = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self.bar = Progress(
                TextColumn("decrypting"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("open", total=total)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.bar is None:
            yield
            return
        with self.bar:
            yield

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def done_to(self, n: int) -> None:
        """A segment is done: the bar stands at the ciphertext read so far."""
        if self.bar is not None:
            self.bar.update(self.task, completed=n)


class ChunkStream:
    """read/readline over decrypted chunks, as `iter_events` reads them, without copying a
    chunk into a buffer: `read(n)` returns at most the rest of the current chunk (iter_events
    takes short reads), the whole chunk itself when it is all wanted."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._cur = b""
        self._pos = 0

    def _next(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._cur, self._pos = chunk, 0
                return True
        self._cur, self._pos = b"", 0
        return False

    def read(self, n: int) -> bytes:
        if self._pos >= len(self._cur) and not self._next():
            return b""
        start, end = self._pos, min(len(self._cur), self._pos + n)
        self._pos = end
        if start == 0 and end == len(self._cur):
            return self._cur
        return self._cur[start:end]

    def readline(self, limit: int = 1 << 20) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < limit:
            if self._pos >= len(self._cur) and not self._next():
                break
            stop = self._cur.find(b"\n", self._pos, self._pos + limit - got)
            end = stop + 1 if stop >= 0 else min(len(self._cur), self._pos + limit - got)
            parts.append(self._cur[self._pos : end])
            got += end - self._pos
            self._pos = end
            if stop >= 0:
                break
        return b"".join(parts)

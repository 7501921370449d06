"""Reading a bundle's segments for opening.py: the ciphertext hashed as it is read, the
plaintext handed on a chunk at a time, and the progress bar (rich, on stderr when a terminal)."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from typing import BinaryIO

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


class HashingFile:
    """A read-only file that hashes what is read from it (the age reader's input). (A
    helper thread for the hash was slower: one hand-over per 64 KiB chunk costs more than
    the hash.)"""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self._digest: str | None = None

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha.update(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._fh.readline(limit)
        self.sha.update(data)
        return data

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self.finish()
        self._fh.close()

    def finish(self) -> str:
        """Hash the rest of the file; the SHA-256 of all of it."""
        if self._digest is None:
            while block := self.read(1 << 20):
                del block
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

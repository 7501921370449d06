"""Writing a segment's ciphertext: batched writes, and its SHA-256 on a background thread.

`SegmentOutput` is the output an `agefile.AgeWriter` writes a segment through (store/segment.py):
one `os.writev` per batch of sealed 64 KiB chunks (~1 MiB), synchronous, so a failure raises
at once in the caller's `write` and every sealed chunk is in the kernel when `write` returns (a
crash keeps the authenticated prefix). The manifest's `ciphertext_sha256` is computed by one
process-wide worker thread that reads the file back from the page cache a few MiB behind the
writer; sealing only waits for the last window.

Why this shape (bench/bench_archive.py): cryptography's ChaCha20-Poly1305 holds the GIL, while
preadv, sha256.update and writev release it for the whole buffer. Handing the worker a few
large reads keeps GIL hand-overs rare (hashing the sealed chunks themselves needs one per
64 KiB, and the worker then waits for the encrypting thread to let go of the GIL), and one
writev per batch is much cheaper than a write per chunk on ext4.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import threading
from pathlib import Path

from store import ArchiveError

HASH_WINDOW = 4 << 20  # ciphertext handed to the hash worker at a time
READ_BUF = 4 << 20  # the hash worker's read-back buffer


def io_message(exc: OSError) -> str:
    """A short, content-free cause for ArchiveError messages."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno == errno.EFBIG:
        return "file size limit exceeded"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied"
    return exc.strerror or f"errno {exc.errno}"


_Item = tuple["_FileDigest | None", int, threading.Event | None]


class _HashWorker:
    """One process-wide thread that hashes the ciphertext of every open segment, in order.

    The encrypting thread holds the GIL (cryptography's AEAD does not release it), so the
    hashing runs here, beside it: the worker reads the segment back from the page cache in
    HASH_WINDOW pieces with one preadv and one sha256.update each (both release the GIL for the
    whole piece, so the two threads rarely wait for each other), then advises the kernel to
    start writing those pages out. The bounded queue keeps the hashing at most a few windows
    behind the writer; memory stays flat (one READ_BUF), whatever the record size.
    """

    _lock = threading.Lock()
    _queue: queue.Queue[_Item] | None = None
    _pid = 0

    @classmethod
    def submit(cls, digest: _FileDigest | None, end: int, done: threading.Event | None) -> None:
        with cls._lock:
            if cls._queue is None or cls._pid != os.getpid():  # first use, or after a fork
                cls._queue = queue.Queue(maxsize=4)
                cls._pid = os.getpid()
                threading.Thread(
                    target=cls._run, args=(cls._queue,), name="lbm-segment-hash", daemon=True
                ).start()
            q = cls._queue
        q.put((digest, end, done))

    @staticmethod
    def _run(q: queue.Queue[_Item]) -> None:
        view = memoryview(bytearray(READ_BUF))
        while True:
            digest, end, done = q.get()
            try:
                if digest is not None:
                    digest.consume(end, view)
            except Exception as exc:  # never let a waiter hang: the seal reports it
                assert digest is not None
                digest.fail(OSError(errno.EIO, f"hashing failed ({type(exc).__name__})"))
            finally:
                if done is not None:
                    done.set()


class _FileDigest:
    """SHA-256 of a segment file exactly as written, computed on the hash worker.

    `advance(end)` (writer thread) queues the bytes written so far once a window has
    accumulated; `consume` (worker) hashes them and starts their writeback with
    posix_fadvise(DONTNEED), which is asynchronous and later drops the pages once clean: the
    disk works while the next chunks are encrypted, the fsync at sealing has little left to
    wait for, and a large segment does not fill the page cache (on tmpfs it does nothing). The
    fsyncs stay where they were (segment at sealing, index per record).
    """

    def __init__(self) -> None:
        self._rfd = -1
        self._sha = hashlib.sha256()
        self._pos = 0  # hashed up to (worker)
        self._kicked = 0  # writeback advised from (worker)
        self._queued = 0  # handed to the worker up to (writer)
        self._pending = False  # the worker may still use _rfd
        self._error: OSError | None = None
        self._final: str | None = None

    def open(self, path: Path) -> None:
        self._rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def advance(self, end: int) -> None:
        if end - self._queued >= HASH_WINDOW:
            self._pending = True
            _HashWorker.submit(self, end, None)
            self._queued = end

    def fail(self, exc: OSError) -> None:
        self._error = exc

    def consume(self, end: int, view: memoryview) -> None:
        """Worker thread: hash the file from where it stopped up to `end`."""
        start = pos = self._pos
        if self._error is not None or end <= pos:
            return
        try:
            while pos < end:
                got = os.preadv(self._rfd, [view[: min(len(view), end - pos)]], pos)
                if got <= 0:
                    raise OSError(errno.EIO, "segment file is shorter than what was written")
                self._sha.update(view[:got])
                pos += got
        except OSError as exc:
            self.fail(exc)
            return
        self._pos = pos
        with contextlib.suppress(OSError):  # advice only: an I/O error shows at the fsync
            os.posix_fadvise(self._rfd, self._kicked, end - self._kicked, os.POSIX_FADV_DONTNEED)
        self._kicked = start  # the next call also drops this window's pages, written by then

    def hexdigest(self, end: int, where: str) -> str:
        if self._final is None:
            done = threading.Event()
            _HashWorker.submit(self, end, done)
            done.wait()
            self._pending = False
            if self._error is not None:
                raise ArchiveError(
                    f"{where}: cannot read the segment back to hash it: {io_message(self._error)}"
                )
            self._final = self._sha.hexdigest()
        return self._final

    def close(self) -> None:
        """Close the read descriptor once the worker is done with it."""
        if self._pending:
            done = threading.Event()
            _HashWorker.submit(None, 0, done)  # the queue is FIFO: everything before is done
            done.wait()
            self._pending = False
        if self._rfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._rfd)
            self._rfd = -1


class SegmentOutput:
    """Writes the ciphertext the age writer emits (`write_many`: one writev per ~1 MiB batch)
    and has it hashed. Writes are synchronous, so a failure raises at once in the caller's
    `write`, and every sealed chunk is in the kernel when `write` returns (a crash keeps the
    authenticated prefix)."""

    def __init__(self, fd: int, where: str) -> None:
        self.fd = fd
        self.where = where
        self.digest = _FileDigest()
        self.bytes = 0

    def _fail(self, exc: OSError) -> ArchiveError:
        return ArchiveError(f"{self.where}: cannot write segment: {io_message(exc)}")

    def write(self, data: bytes, /) -> int:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise self._fail(exc) from None
        self.bytes += len(data)
        self.digest.advance(self.bytes)
        return len(data)

    def write_many(self, chunks: list[bytes], /) -> None:
        total = sum(map(len, chunks))
        try:
            done = os.writev(self.fd, chunks)
            if done < total:  # a short write (a limit reached): finish, or raise its error
                for chunk in chunks:
                    if done >= len(chunk):
                        done -= len(chunk)
                        continue
                    view = memoryview(chunk)[done:]
                    done = 0
                    while view:
                        view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise self._fail(exc) from None
        self.bytes += total
        self.digest.advance(self.bytes)

    def hexdigest(self) -> str:
        return self.digest.hexdigest(self.bytes, self.where)

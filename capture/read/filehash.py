"""The SHA-256 of a capture file from the bytes the reader reads anyway, for the replay ledger
(`capture.read.replayed`), when no child process can hash it (`capture.read.childhash`, the
replay's default since the flow table's work moved to C: the child runs on the free core and
shares no GIL; docs/capture-io.md).

The reader hands `FileHash(fd)` each region it has just read from the file (`feed(offset,
view)`: the file offset and a memoryview of the reader's buffer, never bytes the reader
copies again), in pieces of 512 KiB for pcap. What the reader did not read is read here by
`pread` on the same descriptor (whose offset, the reader's, is untouched): a region past the
bytes hashed so far (the reader skipped an oversize record by seeking) gets the gap read
first; a region overlapping them is hashed from where they end; `result()` reads whatever
follows the last region to the end of the file (a replay stopped early, a broken tail, a
pcapng error), so the digest is always the SHA-256 of the whole file, as `sha256sum` prints
it. If anything does not add up (a read error, the file shrank under a gap), `result()` hashes
the whole file again by `pread`, so a wrong digest is never recorded.

It hashes at once, on the reader's thread, while the piece just read is in that core's cache
(hashlib releases the GIL). A hashing thread of its own was measured and dropped (more CPU,
no less wall time: docs/capture-io.md). OpenSSL's SHA-256 with the CPU's SHA extensions
(hashlib's, 1.9 GB/s here; 0.5 GB/s without them) is the fastest SHA-256 available.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

_READ = 1 << 18
# the ledger's pre-key (`capture.read.replayed`) hashes this much at each end of the file; a
# file of at most twice this is hashed whole by it
EDGE = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """A capture file's identity: SHA-256 of its bytes and its size."""

    sha256: str
    size: int


def digest_fd(fd: int) -> Fingerprint:
    """SHA-256 and size of the whole open file `fd` (position unchanged)."""
    h = hashlib.sha256()
    offset = 0
    buf = bytearray(_READ)  # one buffer, hashed while in the cache (as `childhash`'s child)
    view = memoryview(buf)
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
    return Fingerprint(h.hexdigest(), offset)


class FileHash:
    """The SHA-256 of the open file `fd`, from the regions a reader `feed`s it (see the module
    docstring). `result()` finishes it; `close()` stops it without a result."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._h = hashlib.sha256()
        self._next = 0  # the file offset up to which the file is hashed
        self._failed = False  # something did not add up: result() hashes the whole file
        self._stopped = False

    def feed(self, offset: int, data: memoryview) -> None:
        """Hash `data`, the file's bytes at `offset` (the reader's thread, at once)."""
        if not self._failed and not self._stopped:
            self._hash(offset, data)

    def _hash(self, offset: int, data: memoryview) -> None:
        try:
            self._take(offset, data)
        except Exception:  # an unreadable gap: result() hashes the whole file
            self._failed = True

    def _take(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        if end <= self._next:
            return  # hashed already
        if offset > self._next:
            self._read_to(offset)
        if offset < self._next:
            data = data[self._next - offset :]
        self._h.update(data)
        self._next = end

    def _read_to(self, stop: int | None) -> None:
        """Hash the file from `_next` to `stop` (None: the end of the file) by pread."""
        while stop is None or self._next < stop:
            want = _READ if stop is None else min(_READ, stop - self._next)
            chunk = os.pread(self._fd, want, self._next)
            if not chunk:
                if stop is not None:  # the file ends before a region the reader read
                    self._failed = True
                return
            self._h.update(chunk)
            self._next += len(chunk)

    def result(self) -> Fingerprint:
        """The whole file's fingerprint: the regions fed, and by pread what they left out.
        Call once, after the last `feed`."""
        self._stopped = True
        if not self._failed:
            try:
                self._read_to(None)
            except OSError:
                self._failed = True
        if self._failed:
            return digest_fd(self._fd)
        return Fingerprint(self._h.hexdigest(), self._next)

    def close(self) -> None:
        """Stop hashing what is fed (idempotent; `result()` stops it too)."""
        self._stopped = True

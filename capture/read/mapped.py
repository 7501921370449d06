"""Capture file regions mapped read-only from the page cache, for `capture.read.chunks`.

A chunk read with `read` is copied out of the page cache into a buffer of this process: 0.14 s
of the reader's thread for the 847 MB bench capture, and 32 MiB of buffers whose first touch is
dear on a virtual machine (0.066 s). A mapping of the same range costs neither: its pages are
the page cache's, already backed, and `MADV_POPULATE_READ` maps them in one call; the walk
prefetches ahead of the records it reads (`WALK_AHEAD` in `_fastwalk.c`), since nothing has
brought them into the cache. `lbm capture replay` on the 2M-packet bench capture: median
0.764 s against 0.882 s reading, 14 runs each (docs/capture-io.md, "Chunks mapped from the
page cache").

The catch is a file that shrinks while it is mapped (truncated by another process): touching a
mapped page past its new end raises SIGBUS, which would kill the process. Mappings are made by
`_mapguard.c`, whose SIGBUS handler replaces the pages of one of its mappings from the fault to
the mapping's end with zeros and notes the mapping's `Mapper` (`Mapper.shrunk`); the reader then
fails the file with a `CaptureError` (`capture.read.chunks`, `capture.replay`). Without the C
extension, with ``LBM_CAPTURE_NO_MMAP=1``, or where the handler cannot be installed (a sanitizer
runtime that keeps SIGBUS to itself), `Mapper.open` returns None and the file is read.

A mapped array is read-only (`writeable` False): a write raises instead of faulting.
"""

from __future__ import annotations

import itertools
import mmap
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.read import walk

Buf = npt.NDArray[np.uint8]
_TAGS = itertools.count(1)  # one per Mapper: whose mapping faulted


def _guarded_lib() -> Any:
    """The C extension's ffi and lib if mappings can be guarded here, else None."""
    mod = walk._MOD
    if mod is None or os.environ.get("LBM_CAPTURE_NO_MMAP") or mod.lib.lbm_map_guard() != 0:
        return None
    return mod


class Mapper:
    """Read-only mappings of ranges of the open file `fd` (see the module)."""

    def __init__(self, fd: int, mod: Any) -> None:
        self._fd = fd
        self._ffi, self._lib = mod.ffi, mod.lib
        self._tag = next(_TAGS)

    @classmethod
    def open(cls, fd: int) -> Mapper | None:
        """A mapper for `fd`, or None when mappings cannot be guarded here (read instead)."""
        mod = _guarded_lib()
        return cls(fd, mod) if mod is not None else None

    def map(self, offset: int, length: int) -> Buf | None:
        """The `length` bytes of the file at `offset` (length > 0), read-only; unmapped when
        the array and every view of it are gone. None when the file cannot be mapped (a file
        system without mmap, or no address space): the caller reads instead."""
        lead = offset % mmap.ALLOCATIONGRANULARITY
        size = lead + length
        lib = self._lib
        p = lib.lbm_map(self._fd, offset - lead, size, self._tag)
        if p == self._ffi.NULL:
            return None
        p = self._ffi.gc(p, lambda q: lib.lbm_unmap(q, size), size=size)
        buf: Buf = np.frombuffer(self._ffi.buffer(p, size), np.uint8)[lead:]
        buf.flags.writeable = False
        return buf

    @property
    def shrunk(self) -> bool:
        """True once a page of one of these mappings was touched past the file's end."""
        return bool(self._lib.lbm_map_shrunk(self._tag))

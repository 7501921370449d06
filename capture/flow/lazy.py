"""Per-slot storage that costs resident memory only where it is written.

Each array lives on its own anonymous mapping (`mmap`), whose pages the kernel fills with
zeros at their first write. `np.zeros` gives that only while glibc serves the request with
`mmap`; after a large block is freed, glibc raises its mmap threshold (up to 32 MiB) and
`calloc` clears heap memory instead, which makes every page resident at once. A mapping is
unmapped when its last array view is gone.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np


def zeros(shape: tuple[int, ...], dtype: Any) -> Any:
    """A zeroed array of `shape` whose pages become resident only when written."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    mm = buffer(count * dt.itemsize)
    return np.frombuffer(mm, dt, count=count).reshape(shape)


def grown(a: Any, shape: tuple[int, ...], dtype: Any = None) -> Any:
    """A per-slot array made longer (`shape`; `a` may be None): `zeros`, with `a` copied into
    its start. Unlike `np.concatenate` or `np.full`, the slots past `a` cost no resident
    memory until they are written, so a grown table holds only the slots in use."""
    new = zeros(shape, dtype if dtype is not None else a.dtype)
    if a is not None and len(a):
        new[: len(a)] = a
    return new


def buffer(nbytes: int) -> mmap.mmap:
    """`nbytes` of zeroed memory, resident only where written (for cffi's `from_buffer`)."""
    return mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE)


__all__ = ["buffer", "grown", "zeros"]

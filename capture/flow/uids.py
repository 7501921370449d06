"""Per-slot flow uids kept as fixed-width bytes (17 bytes a slot), not Python strings.

A `str` uid costs about 66 bytes plus its list entry, and 200,000 open flows made 15 MiB of
them; `UidSlots` keeps them in one numpy `S17` array that grows with the flow table.
Indexing with a slot gives the `str`, as the list did.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from capture.flow.lazy import grown

UID_LEN = 17  # 'C' and 16 base62 digits (`capture.flow.keys.make_uids`)


class UidBits:
    """The random values of new uids (`capture.flow.keys.make_uid_bytes` calls `integers`),
    from `os.urandom`, or from `random.Random(seed)` when a seed is given (tests: the same
    uids on every run). Not `numpy.random`: its import and first generator took about 15 ms
    of every replay's start-up. Values are 64 random bits modulo `high`: for uids (unique,
    unguessable names, not a uniform sample) the bias, about 1e-5, does not matter."""

    def __init__(self, seed: int | None = None) -> None:
        self._seeded = random.Random(seed) if seed is not None else None

    def integers(
        self, low: int, high: int, size: tuple[int, int], dtype: type = np.int64
    ) -> npt.NDArray[np.int64]:
        """A `size` array of values in [low, high) (high - low < 2**63)."""
        n = size[0] * size[1]
        raw = self._seeded.randbytes(8 * n) if self._seeded is not None else os.urandom(8 * n)
        v = np.frombuffer(raw, np.uint64) % np.uint64(high - low)
        return (v.astype(np.int64) + low).reshape(size).astype(dtype, copy=False)


class UidLookup(Protocol):
    """What the stages after the flow table need: a slot's uid (a `UidSlots`, or a list)."""

    def __getitem__(self, slot: int, /) -> str: ...


class UidColumn(Sequence[str]):
    """A column of uids (an Arrow string array or a list) as a sequence of str, converted
    at first use (most ended flows' uids are never needed one by one)."""

    def __init__(self, col: Any) -> None:
        self._col = col
        self._list: list[str] | None = None

    def _get(self) -> list[str]:
        if self._list is None:
            col = self._col
            self._list = list(col.to_pylist() if hasattr(col, "to_pylist") else col)
        return self._list

    def __len__(self) -> int:
        return len(self._col)

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())


class UidSlots:
    """uid per flow slot: `uids[slot] -> str`, `uids.set(slots, raw)`, `uids.strs(slots)`."""

    def __init__(self, cap: int = 0) -> None:
        self._a = np.zeros(cap, f"S{UID_LEN}")

    def grow(self, cap: int) -> None:
        old = self._a.size
        if cap > old:
            self._a = grown(self._a, (cap,))  # resident only where written

    def __len__(self) -> int:
        return int(self._a.size)

    def __getitem__(self, slot: int) -> str:
        return bytes(self._a[slot]).decode("ascii")

    def set(self, slots: npt.NDArray[np.int64], raw: npt.NDArray[np.bytes_]) -> None:
        """Give `slots` the uids `raw` (an `S17` array, `make_uid_bytes`)."""
        self._a[slots] = raw

    def strs(self, slots: npt.NDArray[np.int64]) -> list[str]:
        """The uids of `slots` as strings, in order."""
        return [str(u) for u in self._a[slots].astype(f"U{UID_LEN}").tolist()]

    def raw(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.bytes_]:
        """The uids of `slots` as an `S17` array (a copy)."""
        return self._a[slots]

    def arrow(self, slots: npt.NDArray[np.int64]) -> Any:
        """The uids of `slots` as an Arrow string array (no Python string per uid)."""
        import pyarrow as pa  # lazily: the first packet needs none

        raw = np.ascontiguousarray(self._a[slots])
        n = raw.size
        offsets = np.arange(0, (n + 1) * UID_LEN, UID_LEN, dtype=np.int32)
        return pa.Array.from_buffers(
            pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw.view(np.uint8))]
        )

    @property
    def nbytes_per_slot(self) -> int:
        return int(self._a.itemsize)


__all__ = ["UID_LEN", "UidColumn", "UidLookup", "UidSlots"]

"""Stable orderings of small non-negative integers (flow slots), for per-batch grouping.

numpy's stable sort of int64 is a merge sort (about 1 ms for 20,000 slots); for 16-bit keys it
is a radix sort, ten times faster. `stable_argsort` sorts by 16-bit digits, least significant
first, each pass stable, so its answer is exactly `np.argsort(x, kind="stable")`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
_SMALL = 256  # below this, numpy's own sort is as fast


def stable_argsort(x: npt.NDArray[np.integer]) -> I64:
    """`np.argsort(x, kind="stable")` (ties keep their order), by 16-bit radix passes when the
    values are in [0, 2**32); otherwise numpy's sort."""
    if x.size < _SMALL:
        return np.argsort(x, kind="stable").astype(np.int64, copy=False)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= 1 << 32:
        return np.argsort(x, kind="stable").astype(np.int64, copy=False)
    v = x.astype(np.int64, copy=False)
    order = np.argsort((v & 0xFFFF).astype(np.uint16), kind="stable")
    if hi >= 1 << 16:
        order = order[np.argsort((v[order] >> 16).astype(np.uint16), kind="stable")]
    return order.astype(np.int64, copy=False)


def first_of_each(x: npt.NDArray[np.integer]) -> I64:
    """Index of the first occurrence of each distinct value of `x`, in order of value:
    `np.unique(x, return_index=True)[1]`."""
    if x.size == 0:
        return np.zeros(0, np.int64)
    order = stable_argsort(x)
    s = x[order]
    head = np.empty(s.size, bool)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    return order[head]

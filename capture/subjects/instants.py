"""Instants for `capture.subjects.gate`: packets carry nanoseconds since the epoch, leases
and authorisations microseconds or datetimes (to the microsecond). Conversions between them,
clamped to a range that cannot overflow int64 arithmetic (NS_MIN, NS_MAX: "no bound")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

NS_MIN, NS_MAX = -(2**62), 2**62  # "no bound" in nanoseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def ns_of(at: datetime) -> int:
    return (at - _EPOCH) // _US * 1000


def at_of_ns(ts_ns: int) -> datetime:
    """The packet's instant, to the microsecond (as leases and authorisations are)."""
    return _EPOCH + timedelta(microseconds=ts_ns // 1000)


def ns_of_us(us: int) -> int:
    return min(max(us * 1000, NS_MIN), NS_MAX)


def ns_of_us_many(us: list[int]) -> npt.NDArray[np.int64]:
    """`ns_of_us` over a list (OPEN_END-sized values clamp before they could overflow)."""
    a = np.asarray([min(max(u, -(2**53)), 2**53) for u in us], np.int64)
    return np.clip(a * 1000, NS_MIN, NS_MAX)

"""Flow uids kept per slot as fixed-width bytes (capture.flow.uids): the same uids as the
strings they replace, kept across growth, and slot reuse gives the new flow its own uid."""

from __future__ import annotations

import numpy as np

from capture.flow.keys import make_uid_bytes, make_uids
from capture.flow.uids import UidSlots


def test_uid_bytes_are_the_uid_strings_of_the_same_draws() -> None:
    a = make_uid_bytes(np.random.default_rng(5), 1000)
    b = make_uids(np.random.default_rng(5), 1000)
    assert [u.decode("ascii") for u in a.tolist()] == b
    assert len(set(b)) == 1000 and all(u[0] == "C" and len(u) == 17 and u.isalnum() for u in b)


def test_slots_give_strings_keep_them_across_growth_and_overwrite_on_reuse() -> None:
    u = UidSlots(4)
    raw = make_uid_bytes(np.random.default_rng(1), 3)
    u.set(np.array([0, 2, 3]), raw)
    want = [x.decode("ascii") for x in raw.tolist()]
    assert [u[0], u[2], u[3]] == want and isinstance(u[0], str)
    assert u[1] == ""  # a slot never used has no uid
    u.grow(10)
    assert len(u) == 10 and u.strs(np.array([3, 0, 2])) == [want[2], want[0], want[1]]
    again = make_uid_bytes(np.random.default_rng(2), 1)
    u.set(np.array([2]), again)  # the slot serves a new flow
    assert u[2] == again[0].decode("ascii") != want[1]
    assert u.strs(np.zeros(0, np.int64)) == []

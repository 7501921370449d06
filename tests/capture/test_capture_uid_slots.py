"""Flow uids kept per slot as fixed-width bytes (capture.flow.uids): the same uids as the
strings they replace, kept across growth, and slot reuse gives the new flow its own uid."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from capture.flow.keys import make_uid_bytes, make_uid_bytes_np, make_uids
from capture.flow.uids import UidBits, UidSlots


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


def test_uid_bits_seeded_repeat_and_unseeded_are_unique_base62() -> None:
    """`UidBits(seed)` gives the same uids on every run (tests), different seeds different
    ones; unseeded (os.urandom) uids are all distinct, 'C' and 16 base62 digits, and the C
    text pass agrees with its numpy definition on them."""
    a, b, c = (make_uid_bytes(UidBits(s), 1000).tolist() for s in (7, 7, 8))
    assert a == b and a != c
    v = UidBits(3).integers(0, 62**8, size=(5000, 2), dtype=np.int64)
    assert v.shape == (5000, 2) and v.dtype == np.int64
    assert v.min() >= 0 and v.max() < 62**8 and v.max() > 62**8 // 2  # the whole range used
    assert make_uid_bytes(UidBits(9), 4096).tolist() == make_uid_bytes_np(UidBits(9), 4096).tolist()
    uids = make_uid_bytes(UidBits(), 200_000)
    assert len(set(uids.tolist())) == 200_000
    assert re.fullmatch(rb"(C[0-9A-Za-z]{16})+", b"".join(uids.tolist()))


def test_a_flow_table_does_not_load_numpy_random() -> None:
    """numpy.random's import and first generator were 15 ms of every replay's start-up."""
    code = (
        "import sys\n"
        "from capture.flow.table import FlowTable\n"
        "FlowTable(None)\n"
        "assert 'numpy.random' not in sys.modules, 'numpy.random loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

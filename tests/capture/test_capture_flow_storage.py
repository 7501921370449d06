"""The flow table's per-slot storage: reserved once for `max_flows`, resident only where a
flow wrote it, never copied as the table fills (a copy held old and new at once: 47 MiB above
the peak of 8M packets with 200k flows open)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from capture.flow import lazy
from capture.flow.slots import RESERVE_MAX, reserve_slots
from capture.flow.table import FlowConfig, FlowTable


def test_the_reserve_covers_max_flows_and_a_quarter_within_bounds() -> None:
    assert reserve_slots(500_000) == 625_000
    assert reserve_slots(10) == 1024
    assert reserve_slots(100_000_000) == RESERVE_MAX
    t = FlowTable(FlowConfig(max_flows=500_000))
    assert t.capacity == 625_000 and t.span < t.capacity and len(t.parents) == t.span


def test_filling_the_table_up_to_the_reserve_copies_no_storage() -> None:
    t = FlowTable(FlowConfig(seed=1, max_flows=200_000))
    tcp, first_ts, uids = t.tcp, t.first_ts, t.uids._a
    got = t._alloc(240_000)  # past the first span (65,536): only the lists widen
    assert got.tolist() == list(range(240_000)) and t.span >= 240_000
    assert t.tcp is tcp and t.first_ts is first_ts and t.uids._a is uids
    assert len(t.parents) == t.span
    t._alloc(t.capacity)  # past the reserve: the storage grows, keeping what was written
    t.first_ts[5] = 7
    assert t.capacity > 250_000 and t.first_ts is not first_ts


def test_storage_past_the_reserve_keeps_every_slot_written() -> None:
    t = FlowTable(FlowConfig(seed=1, max_flows=10))
    n = t.capacity
    t.first_ts[:n] = np.arange(n)
    t.tcp[n - 1].hist_len = 3
    t._alloc(n + 5)
    assert t.capacity >= n + 5 and t.first_ts[:n].tolist() == list(range(n))
    assert t.tcp[n - 1].hist_len == 3 and int(t.first_ts[n:].max()) == 0


def test_reserved_storage_is_resident_only_where_written() -> None:
    """In a fresh interpreter (RSS is per process): a table reserved for 2M flows (about
    1 GiB of storage) costs a few MiB until used, even after glibc raised its mmap threshold
    (a freed 30 MiB block), when `np.zeros` would clear heap memory page by page."""
    code = textwrap.dedent(
        """
        import numpy as np
        from capture.flow import lazy
        from capture.flow.table import FlowConfig, FlowTable

        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

        big = np.ones(30 * 2**20 // 8); del big  # glibc's threshold rises to 30 MiB
        before = rss()
        t = FlowTable(FlowConfig(max_flows=2_000_000))
        a = lazy.zeros((4_000_000,), np.int64)
        reserved = rss() - before
        t.first_ts[:100_000] = 1; a[:100_000] = 1
        used = rss() - before
        print(t.capacity, reserved, used)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cap, reserved, used = map(int, out.stdout.split())
    assert cap == RESERVE_MAX
    assert reserved < 40  # eagerly cleared it would be about 1 GiB
    assert used - reserved < 8  # 100k slots of two int64 arrays: 1.6 MB


def test_lazy_arrays_are_zeroed_writable_and_grow_keeping_their_start() -> None:
    a = lazy.zeros((1000, 2), np.int32)
    assert a.shape == (1000, 2) and a.flags.writeable and not a.any()
    a[:3] = 9
    b = lazy.grown(a, (5000, 2))
    assert b.dtype == np.int32 and b[:3].tolist() == [[9, 9]] * 3 and not b[3:].any()
    assert lazy.grown(None, (4,), np.uint8).tolist() == [0, 0, 0, 0]


def test_a_refused_reserve_falls_back_to_growing_as_the_table_fills() -> None:
    """Where the address space for the reserve is refused (here a low RLIMIT_AS; strict
    overcommit does the same), the table starts at INITIAL_SLOTS and grows as before."""
    code = textwrap.dedent(
        """
        import resource
        from capture.flow.slots import INITIAL_SLOTS
        from capture.flow.table import FlowConfig, FlowTable

        FlowTable(FlowConfig(max_flows=1000))  # everything imported and warmed up
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20), resource.RLIM_INFINITY))
        t = FlowTable(FlowConfig(seed=1, max_flows=2_000_000))  # about 740 MB reserved
        fell_back = t.capacity == INITIAL_SLOTS
        t.first_ts[:10] = 7
        got = t._alloc(100_000)
        print(fell_back, t.capacity >= 100_000, int(t.first_ts[:10].sum()), got.size)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "70", "100000"]

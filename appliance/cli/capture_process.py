"""Process settings and timing of the capture commands (`lbm capture replay | live`): made
before numpy and pyarrow load, and the `--json` timing figures."""

from __future__ import annotations

import gc
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.app import is_program
from capture import CaptureError
from capture.read.filehash import EDGE
from capture.read.regular import open_regular

if TYPE_CHECKING:
    from capture.read.childhash import ChildHash
    from capture.read.filehash import FileHash


def one_blas_thread() -> None:
    """Process settings for a capture, made before numpy and pyarrow load (explicit environment
    values are kept):
    - OpenBLAS (loaded by numpy, unused by the capture) starts no worker threads, which took
      40-60 ms of wall time at start-up on a loaded machine (and CPU every run);
    - Arrow allocates with the system allocator, and glibc keeps at most two malloc arenas: the
      row blocks are allocated by one thread and freed by another, which mimalloc and per-thread
      arenas kept as resident memory (8M packets with 200k flows open at once peaked at 650 MiB,
      530-550 MiB with these; bench/bench_capture.py --memory)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "MALLOC_ARENA_MAX" not in os.environ:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX (glibc); elsewhere a no-op
        except (OSError, AttributeError):
            pass


def collect_less() -> None:
    """A replay allocates millions of short-lived objects and keeps few in reference cycles:
    with Python's default thresholds the cyclic collector ran about 200 times in a 2M-packet
    replay (40-60 ms of CPU, 20-30 of them during start-up's imports) and freed next to
    nothing. Collect the youngest generation every 100,000 net allocations instead of 700
    (this process only: a replay is not a daemon; peak RSS is unchanged, docs/startup.md).
    Not when `lbm` runs inside another program (a test's process): it would keep the setting."""
    if is_program():
        gc.set_threshold(100_000, 50, 100)


def process_age() -> float:
    """Seconds since this process started: from `LBM_T0` (the caller's `date +%s%N` just
    before starting lbm, for a precise figure) or else /proc/self/stat (10 ms ticks)."""
    t0 = os.environ.get("LBM_T0", "")
    if t0.isdigit():
        return (time.time_ns() - int(t0)) / 1e9
    try:
        with open("/proc/self/stat", "rb") as fh:
            start = int(fh.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def timing_summary(timing: dict[str, float]) -> dict[str, float]:
    """Seconds: process start to the first batch in the pipeline, to now; the final flush;
    the wait for the files' SHA-256 after their rows (the hashing child the last to end)."""
    age, now = process_age(), time.monotonic()
    out = {"total_s": round(age, 3), "close_s": round(timing.get("close", 0.0), 3)}
    out["hash_wait_s"] = round(timing.get("hash_wait", 0.0), 3)
    if "first_batch" in timing:
        out["first_batch_s"] = round(age - (now - timing["first_batch"]), 3)
    return out


class EarlyHash:
    """The first file's ledger SHA-256, started in a child process as `lbm capture replay`
    starts: the pipeline's imports (numpy, the policy, the writers; 0.15-0.3 s) run on one
    core, and the child (`capture.read.childhash`) hashes meanwhile on the other, instead of
    competing with the reader and the flow table for both cores later. `take(fd)` hands the
    child over if `fd` is the same file (device and inode), else stops it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._fh: io.BufferedReader | None = None
        self._child: ChildHash | None = None
        self._file = (0, 0)  # (device, inode) of the file the child hashes
        try:  # a FIFO or device is refused here as by the reader (no numpy needed)
            self._fh = open_regular(Path(name))
        except CaptureError:  # the replay reports it, by name, as it opens the file
            return
        st = os.fstat(self._fh.fileno())
        if st.st_size <= 2 * EDGE:  # hashed whole by the ledger
            self.close()
            return
        self._file = (st.st_dev, st.st_ino)
        from capture.read.childhash import ChildHash

        self._child = ChildHash.spawn(self._fh.fileno())

    def take(self, fd: int) -> ChildHash | None:
        """The running child if it hashes the file open as `fd`, else None (it is stopped)."""
        child, self._child = self._child, None
        if child is None:
            return None
        try:
            st = os.fstat(fd)
            same = (st.st_dev, st.st_ino) == self._file
        except OSError:
            same = False
        if not same:
            child.close()
        return child if same else None

    def close(self) -> None:
        """Stop the child if nobody took it, and close the file (idempotent; after the taker
        is done with the child, whose fallback reads this descriptor)."""
        child, self._child = self._child, None
        if child is not None:
            child.close()
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


def pacer(hasher: ChildHash | FileHash | None, fd: int) -> Callable[[], None] | None:
    """What the replay calls after each batch: the hashing child's priority by how far it is
    behind the reader (`ChildHash.pace`; `fd` shares the reader's file offset). None for a
    `FileHash`, which hashes on the reader's thread."""
    pace = getattr(hasher, "pace", None)
    if pace is None:
        return None
    return lambda: pace(os.lseek(fd, 0, os.SEEK_CUR))

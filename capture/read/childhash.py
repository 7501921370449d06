"""The ledger's SHA-256 of a capture file computed by a child process while the replay runs.

The child inherits the replay's descriptor and hashes the whole file read by `preadv` (the
descriptor's offset is the reader's, untouched), so it hashes the file the replay reads. It
shares no GIL with the reader and the flow table: with the flow table's work in C passes, the
reader's thread became the slowest, and hashing there (`FileHash`'s tap) or on a thread of this
process kept the replay 0.2-0.3 s longer on 2 cores than this child, which costs about the same
CPU but runs beside the replay on the other core (docs/capture-io.md). `lbm capture replay`
starts the first file's child before the pipeline's imports
(`appliance.cli.capture_process.EarlyHash`). When no child can start (a process limit), `spawn`
returns None and the caller uses `FileHash`; a child that fails makes `result()` hash the file
here.

The child runs at nice 19: on 2 cores the replay's main thread and reader's thread are the
critical path, and a child at the same priority took CPU from them while both were runnable
(three busy threads on two cores). At nice 19 it hashes mostly on what the replay leaves free,
and `result()` (the replay's rows are done: nothing else to wait for) puts it back to normal
priority when the process may (root or CAP_SYS_NICE). A process that may not waits for it at
most `IDLE_GRACE_S`, then stops it and hashes the file itself, at normal priority: on a machine
saturated by other work a niced child gets little CPU, and the replay's end would wait for it.
`SCHED_IDLE` was used before and starved the child on one of two machines measured: the
2M-packet replay took 1.34 s against 1.12 s at nice 19 and 1.10 s at nice 0 there, and 2.16
s against 2.23 s at nice 19 and 2.37 s at nice 0 on the other (docs/capture-io.md).

At nice 19 the child also starves when the replay leaves no core free, and the replay's end then
waited up to 0.28 s for the digest with one core idle. `pace(done)`, called by the replay after
each batch with the reader's file offset, puts the child at normal priority while it is more
than `PACE_LAG` bytes behind the reader (read from `/proc/PID/io`) and back to nice 19 once it
is not; without the right to raise a priority, or without `/proc`, it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

from capture.read.filehash import Fingerprint, digest_fd

# SHA-256 and size of the inherited descriptor argv[1]. -I -S: no environment, no site-packages.
# The file is read by `preadv` into one 256 KiB buffer (the descriptor's offset is untouched),
# which SHA-256 then reads from the core's cache: 0.59-0.60 s of CPU for the 847 MB bench
# capture, against 0.76-0.78 s hashing 16 MiB read-only mappings of the page cache (the way
# before) and 0.60-0.63 s with a 1-4 MiB buffer (docs/capture-io.md).
_CHILD = (
    "import hashlib, os, sys\n"
    "os.nice(19)\n"
    "fd, h, o = int(sys.argv[1]), hashlib.sha256(), 0\n"
    "buf = bytearray(1 << 18)\n"
    "view = memoryview(buf)\n"
    "while n := os.preadv(fd, [buf], o):\n"
    "    h.update(view[:n])\n"
    "    o += n\n"
    "print(h.hexdigest(), o)\n"
)
_RESULT = re.compile(rb"([0-9a-f]{64}) ([0-9]+)\s*")
IDLE_GRACE_S = 2.0  # how long `result()` waits for a child it could not put back to normal
PACE_LAG = 96 << 20  # `pace`: the child is put at normal priority while this far behind
PACE_EVERY_S = 0.005  # `pace` looks at most this often


class ChildHash:
    """A running child hashing the open file `fd`; `result()` waits for it, `close()` stops it."""

    def __init__(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        self._fd = fd
        self._proc: subprocess.Popen[bytes] | None = proc
        self._io: int | None = None  # /proc/PID/io, opened at the first `pace`
        self._nice = 19  # the child's priority as set here
        self._paced = 0.0  # `time.monotonic()` of the last look

    @classmethod
    def spawn(cls, fd: int) -> ChildHash | None:
        """Start the child, or None when it cannot start."""
        with contextlib.suppress(OSError):
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _CHILD, str(fd)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(fd,),
            )
            return cls(fd, proc)
        return None

    def pace(self, done: int) -> None:
        """The replay has read `done` bytes of the file: the child runs at normal priority while
        it has hashed more than `PACE_LAG` bytes fewer, at nice 19 else (see the module)."""
        now = time.monotonic()
        proc = self._proc
        if proc is None or now - self._paced < PACE_EVERY_S or self._nice < 0:
            return
        self._paced = now
        try:
            if self._io is None:
                self._io = os.open(f"/proc/{proc.pid}/io", os.O_RDONLY | os.O_CLOEXEC)
            # the first line, "rchar: N": bytes the child has read (and hashed)
            hashed = int(os.pread(self._io, 64, 0).split(b"\n", 1)[0].split()[1])
            want = 0 if done - hashed > PACE_LAG else 19
            if want != self._nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, want)
                self._nice = want
        except (OSError, ValueError, IndexError):  # no /proc, no right to raise it, it ended
            self._nice = -1  # pacing off: the child stays as it is
            self._close_io()

    def _close_io(self) -> None:
        io, self._io = self._io, None
        if io is not None:
            os.close(io)

    def result(self) -> Fingerprint:
        """The whole file's fingerprint (hashed here if the child failed). Call once."""
        self._close_io()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                out, _ = proc.communicate(timeout=None if hurry(proc.pid) else IDLE_GRACE_S)
            except subprocess.TimeoutExpired:  # still idle, and starved: hashed here instead
                proc.kill()
                proc.communicate()
                return digest_fd(self._fd)
            m = _RESULT.fullmatch(out)
            if proc.returncode == 0 and m:
                return Fingerprint(m[1].decode(), int(m[2]))
        return digest_fd(self._fd)

    def close(self) -> None:
        """Stop the child if it still runs (idempotent; `result()` waits for it instead)."""
        self._close_io()
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.communicate()


def hurry(pid: int) -> bool:
    """Put the child `pid` back to normal priority (it is waited for now); False when this
    process may not raise a priority (not root, no CAP_SYS_NICE): the child stays at nice 19."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 0)
    except ProcessLookupError:  # already gone (reaped only by `communicate`): nothing to do
        return True
    except OSError:  # PermissionError
        return False
    return True

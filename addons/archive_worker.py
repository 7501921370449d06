"""`ArchiveWorker`: one thread that runs the Archiver's record writes, in submission order.

Used when `Archiver(background=True)`; off by default (see addons/archiver.py for why: an
awaiting hook lets `client_disconnected` overtake the flow's row in the current chain).

Why a thread: every record ends with an fsync of its segment's index (store/segment.py). On the
event loop, a loaded machine's 4-5 ms per fsync stalled every connection of every user, not only
the subject's (profiled with bench/bench_proxy.py: 46 s of 67 s in `posix.fsync` for 3,000 small
subject requests). fsync releases the GIL, so on this thread it overlaps the proxy's work.

Order: one FIFO queue and one thread, so a flow's records are written in the order they were
submitted (and every flow's relative order too). `drained()` resolves once everything submitted
before it is written: the Archiver awaits it in `response`/`error`/`websocket_end`, so the
record ids are in `FlowState.record_ids` before `Metadata` writes the row (mitmproxy holds that
connection's next events until the hook's awaitable is done; other connections carry on).

Memory: the bytes waiting in the queue are counted; above `max_pending` (64 MiB) `submit`
blocks the caller (the event loop) until the disk catches up, so a disk slower than the network
bounds memory instead of letting it grow (backpressure of last resort; commented where it
happens).

`inline=True` runs each job at once in the caller (unit tests, tools).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("lbm.web.archiver")

MAX_PENDING = 64 << 20

Job = Callable[[], None]


class ArchiveWorker:
    def __init__(self, *, inline: bool = False, max_pending: int = MAX_PENDING) -> None:
        self.inline = inline
        self.max_pending = max_pending
        self.pending = 0  # bytes submitted, not yet written
        self.stalls = 0  # times `submit` had to wait for the disk
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[tuple[Job, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def submit(self, job: Job, nbytes: int = 0) -> None:
        if self.inline or self._stopped:
            job()
            return
        with self._cond:
            if self.pending > self.max_pending:
                # Backpressure of last resort: the disk is slower than the network. Blocking
                # the loop here holds every connection a moment, instead of queueing without
                # bound (memory) or dropping evidence.
                self.stalls += 1
                while self.pending > self.max_pending:
                    self._cond.wait()
            self.pending += nbytes
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lbm-web-archive", daemon=True
                )
                self._thread.start()
        self._queue.put((job, nbytes))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, nbytes = item
            try:
                job()
            except Exception as exc:  # jobs handle their own errors; this is a last guard
                log.error("web archive job raised %s", type(exc).__name__)
            finally:
                with self._cond:
                    self.pending -= nbytes
                    self._cond.notify_all()

    async def drained(self) -> None:
        """Return once every job submitted before this call has run."""
        if self.inline or self._thread is None or self._stopped:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def mark() -> None:
            loop.call_soon_threadsafe(_resolve, done)

        self.submit(mark)
        await done

    def stop(self) -> None:
        """Run what is queued, then end the thread (later submits run inline)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopped = True
        if thread is not None:
            self._queue.put(None)
            thread.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

"""Run a batch producer (read + decode) on a background thread, a few batches ahead.

Reading a capture file (`readinto`), walking its records (C, through cffi) and most of the
numpy decoding release the GIL, so a producer thread overlaps them with the flow table and
application metadata on the consumer's thread. The queue is bounded (`depth` batches), so
memory stays bounded whatever the file size. An exception in the producer is raised in the
consumer at the point the failed batch would have come; a consumer that stops early (an
exception, `close()`) stops the producer and waits for it, so nothing runs on afterwards.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar, cast

T = TypeVar("T")
_END = object()


class Prefetch(Generic[T]):
    """Iterate `source` on a daemon thread, at most `depth` items ahead of the consumer."""

    def __init__(self, source: Iterator[T], depth: int = 2, name: str = "capture-read") -> None:
        self._source = source
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                # stopped while putting (close() drains the queue): not one more item
                if not self._put(item) or self._stop.is_set():
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None and self._stop.is_set():
                with contextlib.suppress(Exception):  # the consumer has stopped already
                    close()

    def wait_taken(self) -> bool:
        """For the producer, while it makes an item: wait until the consumer takes a queued
        item (it has then let go of the one before). False at once when nothing is queued
        (taking nothing, the consumer lets go of nothing), and once stopped."""
        q = self._q
        with q.not_full:  # notified by every `get`
            queued = len(q.queue)
            if queued == 0:
                return False
            while len(q.queue) >= queued:
                if self._stop.is_set():
                    return False
                q.not_full.wait(0.1)
        return True

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield cast(T, item)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer and wait for it (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=0.05)
        self._thread.join()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

"""In-memory counters of what the relay refused or could not do (counts only: no address, host,
principal or reference). The deployment issue exports them (`run/smtp.prom`)."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

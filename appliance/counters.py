"""A daemon's counters, status file and systemd watchdog, in one small module.

`Counters(daemon)` is a `prometheus_client` registry of this process alone (never the global
one): each metric is *read* at collection time from the objects the daemon already keeps
(`Archiver.counts`, the relay's `Counters`, `MetadataWriter.gaps`, the capture summary...), so a
channel only hands over a callable. Label values must be short code words (`[a-z0-9_]{1,40}`:
a kind or a reason from the code's own vocabulary); anything else (an address, a host name, a
reference, an upper-case id) is never shown but added into the label value `other`, so no label
can carry who or what is monitored.

`StatusWriter` is ticked by the daemon's own loop: every `interval` seconds it atomically replaces
`run/NAME.status.json` (0600: name, pid, port, started, uptime, last_error, counters) and
`run/NAME.prom` (the Prometheus text format, `generate_latest`), and, when systemd set
`WATCHDOG_USEC` (for this pid), sends `WATCHDOG=1`. Because the tick comes from the daemon's loop,
a hung loop stops the pings and systemd restarts the unit. `last_error` is never free text: it is
the name of the last *watched* count that increased (e.g. `archive_gap`) and when, so no message
can leak an identifier into an operator's view.

Imports only store and prometheus_client, so the channels may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from store.fsutil import atomic_write
from store.readiness import notify_systemd

PREFIX = "lbm_"
STATUS_INTERVAL = 2.0  # seconds between status/prom writes
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,60}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_]{1,40}$")

Reading = float | int | Mapping[str, float | int]


def check_label_value(value: str) -> str:
    """A label value must be a code word: never an address, host name, reference or person."""
    if not _LABEL_VALUE.match(value):
        raise ValueError(f"metric label value {value[:8]!r}... is not a code word [a-z0-9_]")
    return value


@dataclass(frozen=True)
class _Metric:
    name: str
    doc: str
    kind: str  # "counter" | "gauge"
    read: Callable[[], Reading]
    label: str | None


class Counters:
    """One process's metrics (see the module docstring)."""

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self._metrics: dict[str, _Metric] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a collector: it has collect()

    def _add(self, m: _Metric) -> None:
        if not _NAME.match(m.name):
            raise ValueError(f"metric name {m.name!r}: lower case, digits and _ only")
        if m.name in self._metrics:
            raise ValueError(f"metric {m.name!r} registered twice")
        self._metrics[m.name] = m

    def counter(
        self, name: str, doc: str, read: Callable[[], Reading], *, label: str | None = None
    ) -> None:
        """A monotonic count; `read` returns a number, or {label value: number} with `label`."""
        self._add(_Metric(name, doc, "counter", read, label))

    def gauge(
        self, name: str, doc: str, read: Callable[[], Reading], *, label: str | None = None
    ) -> None:
        """A value that goes up and down (depth, lag, age)."""
        self._add(_Metric(name, doc, "gauge", read, label))

    def _readings(self, m: _Metric) -> dict[str, float]:
        value = m.read()
        if isinstance(value, Mapping):
            if m.label is None:
                raise ValueError(f"metric {m.name!r} read a mapping but has no label")
            out: dict[str, float] = {}
            for k, v in value.items():  # a key that is no code word is only ever summed
                key = str(k) if _LABEL_VALUE.match(str(k)) else "other"
                out[key] = out.get(key, 0.0) + float(v)
            return out
        return {"": float(value)}

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol."""
        for m in self._metrics.values():
            labels = [m.label] if m.label else []
            family: CounterMetricFamily | GaugeMetricFamily
            if m.kind == "counter":
                family = CounterMetricFamily(PREFIX + m.name, m.doc, labels=labels)
            else:
                family = GaugeMetricFamily(PREFIX + m.name, m.doc, labels=labels)
            for key, value in self._readings(m).items():
                family.add_metric([key] if m.label else [], value)
            yield family

    def values(self) -> dict[str, Any]:
        """Every metric's current value(s), for the status file."""
        out: dict[str, Any] = {}
        for m in self._metrics.values():
            readings = self._readings(m)
            out[m.name] = readings[""] if m.label is None else readings
            if isinstance(out[m.name], float) and out[m.name].is_integer():
                out[m.name] = int(out[m.name])
        return out

    def render(self) -> bytes:
        """The Prometheus text format of this process's metrics."""
        return generate_latest(self.registry)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's WATCHDOG_USEC), or None when no
    watchdog is asked of this process (WATCHDOG_PID names another pid, or nothing is set)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


class StatusWriter:
    """Writes run/NAME.status.json and run/NAME.prom, and pings the watchdog (module docstring).

    `errors` maps an error kind (a code word) to a callable returning a count; when that count
    rises, `last_error` becomes {"kind": ..., "at": ...}."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        counters: Counters,
        *,
        interval: float = STATUS_INTERVAL,
        errors: Mapping[str, Callable[[], float | int]] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.name = name
        self.counters = counters
        self.interval = interval
        self.port: int | None = None
        self.started = datetime.now(UTC)
        self._mono_start = time.monotonic()
        self._errors = {check_label_value(k): f for k, f in (errors or {}).items()}
        self._seen = {k: 0.0 for k in self._errors}
        self.last_error: dict[str, str] | None = None
        self._last_write = float("-inf")
        self._watchdog = watchdog_interval()
        self._last_ping = float("-inf")
        self.status_path = run_dir / f"{name}.status.json"
        self.prom_path = run_dir / f"{name}.prom"

    def _check_errors(self) -> None:
        for kind, read in self._errors.items():
            try:
                value = float(read())
            except Exception:  # a counter that cannot be read is itself the error
                value = self._seen[kind] + 1
            if value > self._seen[kind]:
                self.last_error = {"kind": kind, "at": datetime.now(UTC).isoformat()}
            self._seen[kind] = value

    def status(self, state: str = "running") -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": os.getpid(),
            "port": self.port,
            "state": state,
            "started": self.started.isoformat(),
            "uptime": round(time.monotonic() - self._mono_start, 1),
            "written": datetime.now(UTC).isoformat(),
            "last_error": self.last_error,
            "counters": self.counters.values(),
        }

    def write(self, state: str = "running") -> None:
        """Replace both files now."""
        self._check_errors()
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(self.status(state), sort_keys=True).encode() + b"\n"
        atomic_write(self.status_path, data, mode=0o600)
        atomic_write(self.prom_path, self.counters.render(), mode=0o600)
        self._last_write = time.monotonic()

    def tick(self) -> None:
        """Call from the daemon's loop (about every second): writes when due, pings the
        watchdog. Never raises: a full disk must not stop the daemon (it shows as stale)."""
        now = time.monotonic()
        if self._watchdog is not None and now - self._last_ping >= self._watchdog:
            notify_systemd(b"WATCHDOG=1")
            self._last_ping = now
        if now - self._last_write >= self.interval:
            try:
                self.write()
            except (OSError, ValueError):
                self._last_write = now  # retried at the next interval

    def close(self) -> None:
        """The final status (state `stopped`); the .prom file is removed, so a stopped daemon's
        counters are not served as if it ran."""
        with contextlib.suppress(OSError, ValueError):
            self.write("stopped")
        self.prom_path.unlink(missing_ok=True)

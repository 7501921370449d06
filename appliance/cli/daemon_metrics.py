"""Which counters each daemon publishes (through `appliance.counters`), read from the objects the
daemons already keep. Decided here, in one place, so a reviewer sees every metric an operator
can see:

- counts of everyone's traffic (connections, requests, bytes, messages, packets) and of failures
  (refusals by reason, delivery failures, archive gaps, metadata rows refused, kernel drops);
- never a count that splits intercepted from passed-through traffic, nor archived records or
  archived bytes per daemon: those would tell an operator that someone is a subject right now.
  Archive gaps are counted as a total (an operator must act on them: disk full, key store
  unwritable), as the audit log already records each one.

Label values are code words only (`appliance.counters` refuses anything else).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from appliance.counters import Counters
from store import witness
from store.paths import DataPaths


class _Writer(Protocol):
    @property
    def gaps(self) -> int: ...

    def backlog(self) -> tuple[int, float]: ...

    def store_backlog(self) -> tuple[int, int, int]: ...


class _Source(Protocol):
    @property
    def checked_ago(self) -> float: ...

    @property
    def stale(self) -> bool: ...

    def current(self) -> Any: ...


def add_writer(counters: Counters, writer: _Writer) -> None:
    """Metadata writer: refused rows, queue depth and lag."""
    counters.counter(
        "metadata_rows_refused",
        "metadata rows refused under overload (each audited as a metadata_gap)",
        lambda: writer.gaps,
    )
    counters.gauge(
        "metadata_queue_rows", "rows waiting for the metadata writer", lambda: writer.backlog()[0]
    )
    counters.gauge(
        "metadata_writer_lag_seconds",
        "how long the oldest queued metadata row has waited (0 when the queue is empty)",
        lambda: round(writer.backlog()[1], 3),
    )
    # metadata on object storage (zeros for a local root): counts only, never keys or names
    counters.gauge(
        "store_backlog_bytes", "metadata bytes published locally and awaiting upload",
        lambda: writer.store_backlog()[0],
    )  # fmt: skip
    counters.gauge(
        "store_backlog_files", "metadata files published locally and awaiting upload",
        lambda: writer.store_backlog()[1],
    )  # fmt: skip
    counters.counter(
        "store_upload_failures", "failed uploads of metadata to the object store (retried)",
        lambda: writer.store_backlog()[2],
    )  # fmt: skip


def add_policy(counters: Counters, source: _Source) -> None:
    """Policy snapshot: version, age and whether it is stale (fail closed)."""
    counters.gauge(
        "policy_snapshot_version", "version of the policy snapshot in force in this process",
        lambda: source.current().version,
    )  # fmt: skip
    counters.gauge(
        "policy_snapshot_age_seconds", "seconds since the registry was last read successfully",
        lambda: round(source.checked_ago, 3),
    )  # fmt: skip
    counters.gauge(
        "policy_stale", "1 while the registry is out of reach (everyone gets metadata only)",
        lambda: int(source.stale),
    )  # fmt: skip


class RowTally:
    """Wraps a metadata writer for the proxy: counts rows and bytes of every row (everyone's
    traffic, not split by decision), then passes the row on unchanged."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self.rows = 0
        self.bytes = {"up": 0, "down": 0}

    def append_nowait(self, row: dict[str, Any]) -> bool:
        self.rows += 1
        self.bytes["up"] += int(row.get("bytes_up") or 0)
        self.bytes["down"] += int(row.get("bytes_down") or 0)
        ok: bool = self._writer.append_nowait(row)
        return ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class ConnectionTally:
    """A duck-typed mitmproxy addon (no mitmproxy import: the CLI layer may not): counts client
    connections and requests, all of them, whatever the decision."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    def client_connected(self, client: object) -> None:
        self.connections += 1

    def requestheaders(self, flow: object) -> None:
        self.requests += 1


def proxy_counters(
    *,
    mode: str,
    tally: ConnectionTally,
    rows: RowTally,
    identity: Any,
    archiver: Any,
    open_connections: Callable[[], int],
) -> Counters:
    c = Counters("proxy")
    c.counter(
        "web_connections", "client connections accepted, by proxy mode",
        lambda: {mode: tally.connections}, label="mode",
    )  # fmt: skip
    c.gauge("web_connections_open", "client connections open now (all)", open_connections)
    c.counter("web_requests", "HTTP requests seen (all clients)", lambda: tally.requests)
    c.counter("web_rows", "web metadata rows written (all clients)", lambda: rows.rows)
    c.counter(
        "web_bytes", "message body bytes of every row, by direction", lambda: rows.bytes,
        label="direction",
    )  # fmt: skip
    if identity is not None:
        c.counter(
            "web_identity", "how clients were identified or refused (counts only)",
            lambda: dict(vars(identity.counts)), label="outcome",
        )  # fmt: skip
    if archiver is not None:
        c.counter(
            "archive_gaps", "archive writes that failed (each audited as a capture_gap)",
            lambda: archiver.counts.gaps,
        )  # fmt: skip
    return c


# archive-path events: `archive_gap` is published as lbm_archive_gaps_total; `audit_failed` (a
# gap whose audit entry failed) only happens while archiving, so it is not shown on its own
SMTP_HIDDEN = frozenset({"archive_gap", "audit_failed"})


def relay_counters(
    *, events: Callable[[], Mapping[str, int]], delivery: Any, spool_dir: Path
) -> Counters:
    c = Counters("smtp")
    c.counter(
        "smtp_events", "relay events by kind (accepted, refusals by reason, AUTH outcomes)",
        lambda: {k: v for k, v in events().items() if k not in SMTP_HIDDEN}, label="kind",
    )  # fmt: skip
    c.counter(
        "archive_gaps", "archive writes that failed (each audited as a capture_gap)",
        lambda: events().get("archive_gap", 0),
    )  # fmt: skip
    if delivery is not None:
        c.counter(
            "smtp_delivery", "delivery outcomes per recipient, DSNs and spool problems",
            lambda: dict(delivery.counts), label="outcome",
        )  # fmt: skip
    c.gauge(
        "smtp_spool_depth", "messages in the spool (in transit)", lambda: spool_depth(spool_dir)
    )
    return c


def spool_depth(spool_dir: Path) -> int:
    """Messages in transit: one `.json` envelope each in the spool directory."""
    try:
        return sum(1 for p in spool_dir.glob("*.json") if p.is_file())
    except OSError:
        return 0


def capture_counters(interface: str, summary: Callable[[], Any]) -> Counters:
    """Live capture: packets, flows, kernel drops and bad packets by kind; never archived
    packets (a subject's)."""
    c = Counters(f"capture-{interface}")
    c.counter("capture_packets", "packets read from the interface", lambda: summary().packets)
    c.counter("capture_flows", "flow rows written", lambda: summary().flows)
    c.counter(
        "capture_kernel_drops", "packets the kernel dropped before we read them",
        lambda: summary().bad_packets.get("reader_kernel_drop", 0),
    )  # fmt: skip
    c.counter(
        "capture_bad_packets", "packets that could not be decoded, by kind",
        lambda: {k: v for k, v in summary().bad_packets.items() if k != "reader_kernel_drop"},
        label="kind",
    )  # fmt: skip
    c.counter(
        "archive_gaps", "archive writes that failed (each audited as a capture_gap)",
        lambda: summary().archive_errors + summary().archive_hold_dropped,
    )  # fmt: skip
    return c


GIB = 1 << 30


def archive_stored_gib(paths: DataPaths) -> int:
    """Archive and key store size on disk, in whole GiB (rounded down): enough to plan capacity,
    too coarse to show one subject's traffic arriving."""
    total = 0
    for top in (paths.root / "archive", paths.root / "keystore"):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total // GIB


def disk_free_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return round(100.0 * usage.free / usage.total, 2) if usage.total else 0.0


def gateway_counters(paths: DataPaths, keeper: Any) -> Counters:
    """Housekeeping publishes the gateway-wide figures: witness failures, disk, archive size."""
    c = Counters("housekeeping")
    c.counter("housekeeping_passes", "housekeeping passes", lambda: keeper.passes)
    c.counter(
        "identity_feed_imports", "identity feed re-imports (changed file)",
        lambda: keeper.feed_imports,
    )  # fmt: skip
    c.counter(
        "identity_feed_failures", "identity feed imports that failed",
        lambda: keeper.feed_failures,
    )  # fmt: skip
    c.counter(
        "audit_witness_failures", "audit heads the journal witness did not take",
        lambda: witness.load_state(paths.audit_dir).failures_total,
    )  # fmt: skip
    c.gauge(
        "audit_witness_failing", "1 while the off-box witness is failing",
        lambda: int(witness.load_state(paths.audit_dir).failing),
    )  # fmt: skip
    c.gauge(
        "data_disk_free_percent", "free space on the data directory's file system",
        lambda: disk_free_percent(paths.root),
    )  # fmt: skip
    c.gauge(
        "archive_stored_gib", "archive and key store on disk, whole GiB (rounded down)",
        _cached(lambda: archive_stored_gib(paths), 300.0),
    )  # fmt: skip
    c.counter(  # archives on object storage (issue 19): counts only
        "archive_upload_failures", "sealed segment uploads that failed (retried next pass)",
        lambda: getattr(keeper, "upload_failures", 0),
    )  # fmt: skip
    c.gauge(
        "archive_upload_pending", "sealed segments awaiting upload to the object store",
        lambda: getattr(keeper, "upload_pending", 0),
    )  # fmt: skip
    return c


def _cached(fn: Callable[[], int], seconds: float) -> Callable[[], int]:
    """`fn`'s value, recomputed at most every `seconds` (walking the archive is not free)."""
    memo: list[float | int] = [float("-inf"), 0]

    def read() -> int:
        if time.monotonic() - memo[0] >= seconds:
            memo[1] = fn()
            memo[0] = time.monotonic()
        return int(memo[1])

    return read

"""Metadata on object storage: the local outbox and the thread that uploads it.

With `[store] metadata_root = s3://BUCKET/PREFIX`, a writer's publication rounds (`store.compact`,
unchanged) publish into a local *outbox*, `journal/WRITER.outbox/stream=S/date=D/hour=H/
GATEWAY__WRITER__SEQ.parquet`, instead of the local metadata folder. The `Uploader` thread copies
each outbox file to the same key below the object-store root in one object
(`open_output_stream`, closed: the object appears whole or not at all) and deletes the local file
only after the store has acknowledged it. So:

- the journal and `flush()` are unchanged (durable locally);
- a row is in the journal, or in one outbox file, or in one object (the round's commit record
  moves it from the first to the second, as for a local root);
- a kill -9 mid-upload leaves the outbox file, which is uploaded again on restart under the same
  key with the same bytes (an idempotent overwrite), so nothing is lost or duplicated;
- the store being down costs nothing on the appending path: uploads fail, are counted and retried
  with a backoff (0.5 s doubling to 30 s), and the outbox grows. Its size is the *backlog*, bounded
  by `[store] upload_backlog_mb`: beyond it the engine stops draining its queues (rows stay queued
  or in the journal), so `append_nowait` refuses once the queue is full (an audited metadata gap).

No compaction happens on the object store (a listing reader would see the parts and the merged
object together); rounds are published every `[store] metadata_publish_seconds` instead, one
object per stream and hour per round.

Sequence numbers: uploaded files leave the outbox, so the highest SEQ is kept in
`journal/WRITER.seq`, written (fsynced) before a round uses new numbers. A writer starts at that
SEQ or the current Unix time in seconds, whichever is higher, so neither a rebuilt gateway with
the same id nor a journal/ restored from an older backup overwrites objects already uploaded.

Messages name the store's URI (bucket and prefix, as configured) and counts, never credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from store import compact as cp
from store.fsutil import atomic_write, ensure_dir
from store.objectstore import StoreRoot, StoreSettings, open_root

log = logging.getLogger("lbm.store.metadata")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
CLOSE_TIMEOUT = 5.0  # at close, how long to keep uploading what is left (then: next start)
FAILURE_LOG_EVERY = 60.0  # seconds between repeated error lines during an outage
MIB = 1024 * 1024


class StoreBacklog(NamedTuple):
    """What an operator sees of the uploads: counts only, never keys or names."""

    bytes: int  # outbox bytes awaiting upload
    files: int  # outbox files awaiting upload
    failures: int  # failed upload attempts since the writer opened


def open_remote(settings: StoreSettings) -> StoreRoot:
    """The metadata root on the object store, with timeouts so an outage cannot hang a thread."""
    import pyarrow.fs as pafs

    return open_root(
        settings.metadata_root,
        settings.s3,
        connect_timeout=3,
        request_timeout=30,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2),
        allow_delayed_open=True,  # a small file is one PutObject at close, not a multipart
    )


def read_seq(path: Path) -> int | None:
    """The highest SEQ recorded in `journal/WRITER.seq`, or None when there is no such file."""
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        raise cp.StoreError(f"{path} does not hold a sequence number; inspect it") from None


def reserve_seq(path: Path, seq: int) -> None:
    """Record that numbers up to `seq` are in use (before any file with them exists)."""
    atomic_write(path, f"{seq}\n".encode())


def outbox_files(outbox: Path) -> list[Path]:
    """Published (visible, well-named) files in the outbox, oldest SEQ first."""
    found = []
    for path in outbox.glob("stream=*/date=*/hour=*/*.parquet"):
        parsed = cp.parse_name(path.name)
        if parsed is not None:
            found.append((parsed.seq, path))
    return [p for _, p in sorted(found)]


class Uploader:
    """Copies outbox files to the object store and deletes them once uploaded (a thread)."""

    def __init__(
        self,
        outbox: Path,
        remote: StoreRoot,
        writer: str,
        settings: StoreSettings,
        dir_lock: threading.RLock,
    ) -> None:
        self.outbox = ensure_dir(outbox)
        self.dir_lock = dir_lock  # the engine's io_lock: no round writes while dirs are removed
        self.remote = remote
        self.writer = writer
        self.limit = int(settings.upload_backlog_mb) * MIB
        self.lock = threading.Lock()  # guards the counters and an upload's unlink
        self.bytes = self.files = self.failures = self.uploaded = 0
        self.failing_since: float | None = None
        self._last_log = float("-inf")
        self.wake = threading.Event()
        self.idle = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self._deadline = 0.0
        self.rescan()
        self.thread = threading.Thread(target=self._run, name=f"lbm-upload-{writer}", daemon=True)

    # -- accounting -------------------------------------------------------------------------
    def rescan(self) -> None:
        """Recount the backlog from the outbox (after a round published into it)."""
        with self.lock:
            files = outbox_files(self.outbox)
            size = 0
            for path in files:
                try:
                    size += path.stat().st_size
                except FileNotFoundError:  # removed by hand
                    continue
            self.bytes, self.files = size, len(files)
            if not files:
                self.idle.notify_all()
        self.wake.set()

    def backlog(self) -> StoreBacklog:
        with self.lock:
            return StoreBacklog(self.bytes, self.files, self.failures)

    @property
    def over_limit(self) -> bool:
        """The backlog reached `upload_backlog_mb`: stop making new outbox files."""
        return self.files > 0 and self.bytes >= self.limit

    # -- uploading --------------------------------------------------------------------------
    def _upload(self, path: Path) -> None:
        rel = path.relative_to(self.outbox).as_posix()
        size = path.stat().st_size
        key = self.remote.path(rel)
        import shutil  # here: a writer without an object store (every replay) never needs it

        with path.open("rb") as src, self.remote.fs.open_output_stream(key) as out:
            shutil.copyfileobj(src, out, 8 * MIB)
        # the close above returned: the store holds the whole object
        with self.lock:
            path.unlink(missing_ok=True)
            self.bytes = max(0, self.bytes - size)
            self.files = max(0, self.files - 1)
            self.uploaded += 1
            if self.files == 0:
                self.idle.notify_all()

    def upload_pass(self, deadline: float | None = None) -> bool:
        """Upload every outbox file once; False at the first failure (the rest wait)."""
        done: set[Path] = set()
        for path in outbox_files(self.outbox):
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                self._upload(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._failed(exc)
                return False
            done.add(path.parent)
        self._remove_empty(done)
        if self.failing_since is not None:
            log.warning(
                "metadata writer %r: uploads to %s work again after %.0f s",
                self.writer,
                self.remote.uri,
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None
        return True

    def _remove_empty(self, hour_dirs: set[Path]) -> None:
        """Remove outbox hour and date folders left empty (one per hour would pile up)."""
        if not hour_dirs:
            return
        with self.dir_lock:
            for hour_dir in sorted(hour_dirs):
                for d in (hour_dir, hour_dir.parent):
                    try:
                        d.rmdir()
                    except OSError:  # not empty (or gone): leave it
                        break

    def _failed(self, exc: OSError) -> None:
        now = time.monotonic()
        with self.lock:
            self.failures += 1
            waiting, size = self.files, self.bytes
        if self.failing_since is None:
            self.failing_since = now
        if now - self._last_log >= FAILURE_LOG_EVERY:
            self._last_log = now
            # pyarrow's text names the operation, key and bucket (metadata layout, no person)
            # and never the credentials; it is cut short all the same
            log.error(
                "metadata writer %r: upload to %s failed (%d files, %d bytes waiting; "
                "retrying): %s",
                self.writer,
                self.remote.uri,
                waiting,
                size,
                _short(exc),
            )

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            stopping = self.stopping.is_set()
            if self.files:
                ok = self.upload_pass(self._deadline if stopping else None)
                if stopping:
                    return
                if ok:
                    delay = BACKOFF_MIN
                    continue
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if stopping:
                return
            self.wake.wait(5.0)
            self.wake.clear()

    def start(self) -> None:
        self.thread.start()

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything published is on the store)."""
        self.wake.set()
        with self.lock:
            return self.idle.wait_for(lambda: self.files == 0, timeout)

    def stop(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Upload what is left for up to `timeout` seconds (unless the store is failing), then
        stop; files still waiting are uploaded at the next start."""
        self._deadline = time.monotonic() + (0 if self.failing_since is not None else timeout)
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join()


def _short(exc: BaseException, limit: int = 300) -> Any:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."

"""The durable mail spool: a message is on disk, fsynced, before the relay answers `250`.

Layout under `spool/` (mode 0700, files 0600):

- `ID.msg`: the bytes to deliver (one `Received:` line + the DATA payload), written once.
- `ID.json`: the envelope and the delivery state; its rename into place is the commit point.
  It names the message's length and SHA-256, so a truncated or altered message is caught.
- `.ID.json.tmp`: an envelope being written (never read).
- `ID.dlv`: an empty marker made before DATA is sent upstream and removed after the outcome is
  recorded; an entry found with it at start may already be upstream (at-least-once: counted as
  a possible duplicate). The marker is not fsynced: it survives a crashed process (`kill -9`),
  not necessarily a power cut, where the count may then be low.
- `quarantine/`: committed entries found broken at start (unreadable envelope, message missing,
  short or altered); moved aside, audited `spool_quarantine`, never delivered.
- `requests/`: `lbm smtp queue retry|remove` asks the running relay through small files there.
- `lock`: held (flock) by the running relay, so the queue CLI knows whether one is running.

Writing (`accept`): the message is written to `ID.msg`, the envelope to `.ID.json.tmp`, both are
fsynced, the envelope is renamed to `ID.json` and the directory is fsynced. With group commit,
concurrent accepts are written by one committer round: every file written since the last round
is fsynced (in parallel, so the file system joins them in one journal commit), the envelopes are
renamed, and one directory fsync makes the whole round durable; then every accept returns.

Removal deletes `ID.json` first, then `ID.msg` (not fsynced: a power cut may bring a delivered
entry back, which is then delivered again, as at-least-once allows). A crash between leaves an
`ID.msg` without an envelope, exactly what a crash during `accept` leaves. Such a message was
never answered `250` (the client still holds it and retries), so start-up deletes it instead of
keeping content no one is responsible for (the privacy rule: no content of non-subjects
lingers in the data directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.mail import spool_recovery
from appliance.mail.envelope import ID_RE, Envelope, SpoolError, new_id
from appliance.mail.spool_recovery import LoadReport

__all__ = ["ID_RE", "Envelope", "LoadReport", "Spool", "SpoolError", "new_id"]
from store.fsutil import ensure_dir, fsync_dir

FILE_MODE = 0o600
_FSYNC_THREADS = 8
RECENT_MESSAGE_MAX = 1024 * 1024  # messages up to this size stay in memory until woken
RECENT_TOTAL_MAX = 64 * 1024 * 1024


class AuditSink(Protocol):
    def append(self, action: Any, actor: str, refs: Iterable[str] = (), **fields: Any) -> Any: ...


@dataclass
class _Pending:
    envelope: Envelope
    message: bytes
    future: asyncio.Future[None]


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        clock: Any = None,
        audit: AuditSink | None = None,
        actor: str | None = None,
        group_commit: bool = True,
    ) -> None:
        self.directory = ensure_dir(Path(directory))
        self.quarantine_dir = self.directory / "quarantine"
        self.requests_dir = self.directory / "requests"
        self.clock = clock
        self.audit = audit
        self.actor = actor or "lbm-smtp"
        self.group_commit = group_commit
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="spool-fsync")
        self._lock_fd: int | None = None
        self._busy = False
        self.rounds = 0  # committer rounds (group commit); messages / rounds = group size
        self.committed = 0
        # accepted, not yet taken by the worker; small messages keep their bytes (no re-read)
        self._recent: dict[str, tuple[Envelope, bytes | None]] = {}
        self._recent_bytes = 0
        self._loaded: LoadReport | None = None  # the last load(), until the worker takes it

    # -- paths -----------------------------------------------------------------------------
    def msg_path(self, spool_id: str) -> Path:
        return self.directory / f"{spool_id}.msg"

    def env_path(self, spool_id: str) -> Path:
        return self.directory / f"{spool_id}.json"

    # -- the relay's lock ------------------------------------------------------------------
    def lock(self) -> None:
        """Hold spool/lock for this process's life (the queue CLI then asks through requests/).
        Raises SpoolError when another relay holds it."""
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"{self.directory} is in use by another relay") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- accepting ---------------------------------------------------------------------------
    async def accept(self, envelope: Envelope, message: bytes) -> None:
        """`message` = the bytes to deliver: one Received: line + the DATA payload, exactly.
        Returns once message and envelope are durable (fsynced; fsyncs of concurrent sessions
        grouped). Raises SpoolError (the handler answers 451 4.3.0)."""
        if not ID_RE.fullmatch(envelope.id):
            raise SpoolError("spool id must be 8-40 characters [0-9a-z]")
        if not envelope.rcpts:
            raise SpoolError("a message needs at least one recipient")
        if not envelope.pending and not envelope.bounced:
            envelope.pending = list(envelope.rcpts)
        loop = asyncio.get_running_loop()
        if not self.group_commit:
            await loop.run_in_executor(self._pool, self._commit_one, envelope, message)
            self._remember(envelope, message)
            return
        pending = _Pending(envelope, message, loop.create_future())
        self._queue.append(pending)
        if self._committer is None or self._committer.done():
            self._wakeup = asyncio.Event()
            self._committer = loop.create_task(self._commit_loop(), name="spool-committer")
        assert self._wakeup is not None
        self._wakeup.set()
        await pending.future
        self._remember(envelope, message)

    def _remember(self, envelope: Envelope, message: bytes) -> None:
        keep = len(message) <= RECENT_MESSAGE_MAX and self._recent_bytes < RECENT_TOTAL_MAX
        self._recent[envelope.id] = (envelope, message if keep else None)
        self._recent_bytes += len(message) if keep else 0

    def take_recent(self, spool_id: str) -> tuple[Envelope, bytes | None] | None:
        """The envelope `accept` just committed and, if small, its bytes (the worker's `wake`
        takes them from here, so a first attempt needs no read)."""
        taken = self._recent.pop(spool_id, None)
        if taken is not None and taken[1] is not None:
            self._recent_bytes -= len(taken[1])
        return taken

    def _commit_one(self, envelope: Envelope, message: bytes) -> None:
        try:
            fds = self._write_files(envelope, message)
        except OSError as exc:
            raise SpoolError(f"cannot write the spool ({exc.strerror or exc})") from None
        try:
            for fd in fds:
                os.fsync(fd)
                os.close(fd)
            os.replace(self._tmp_env(envelope.id), self.env_path(envelope.id))
            fsync_dir(self.directory)
        except OSError as exc:
            self._discard(envelope.id)
            raise SpoolError(f"cannot write the spool ({exc.strerror or exc})") from None
        self.committed += 1

    async def _commit_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(None, self._commit_batch, batch)
            except Exception as exc:  # the round failed as a whole (directory fsync)
                results = [SpoolError(f"cannot write the spool ({type(exc).__name__})")] * len(
                    batch
                )
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if result is None:
                    item.future.set_result(None)
                else:
                    item.future.set_exception(result)
            self._busy = False
            if self._queue:
                self._wakeup.set()

    def _commit_batch(self, batch: list[_Pending]) -> list[SpoolError | None]:
        """One group-commit round, in a thread: write all, fsync all (in parallel), rename all,
        fsync the directory once."""
        results: list[SpoolError | None] = [None] * len(batch)
        written: list[tuple[int, list[int]]] = []
        for index, item in enumerate(batch):
            try:
                written.append((index, self._write_files(item.envelope, item.message)))
            except OSError as exc:  # _write_files removed what it had made
                results[index] = SpoolError(f"cannot write the spool ({exc.strerror or exc})")

        def sync(fds: list[int]) -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)

        futures = [(index, self._pool.submit(sync, fds)) for index, fds in written]
        renamed: list[int] = []
        for index, fut in futures:
            spool_id = batch[index].envelope.id
            try:
                fut.result()
                os.replace(self._tmp_env(spool_id), self.env_path(spool_id))
                renamed.append(index)
            except OSError as exc:
                self._discard(spool_id)
                results[index] = SpoolError(f"cannot write the spool ({exc.strerror or exc})")
        if renamed:
            try:
                fsync_dir(self.directory)
            except OSError as exc:
                for index in renamed:
                    self._discard(batch[index].envelope.id)
                    results[index] = SpoolError(f"cannot sync the spool ({exc.strerror or exc})")
                return results
        self.rounds += 1
        self.committed += len(renamed)
        return results

    def _tmp_env(self, spool_id: str) -> Path:
        return self.directory / f".{spool_id}.json.tmp"

    def _write_files(self, envelope: Envelope, message: bytes) -> list[int]:
        """Write ID.msg and .ID.json.tmp; return their open descriptors (caller fsyncs). On
        failure, remove only what this call created (an id already in use is never touched)."""
        envelope.msg_len = len(message)
        envelope.msg_sha256 = hashlib.sha256(message).hexdigest()  # here: off the event loop
        fds: list[int] = []
        made: list[Path] = []
        try:
            for path, data in (
                (self.msg_path(envelope.id), message),
                (self._tmp_env(envelope.id), envelope.to_json()),
            ):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                fds.append(fd)
                made.append(path)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            for fd in fds:
                os.close(fd)
            for path in made:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return fds

    def _discard(self, spool_id: str) -> None:
        for path in (self._tmp_env(spool_id), self.env_path(spool_id), self.msg_path(spool_id)):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- reading and updating ------------------------------------------------------------
    def read_message(self, spool_id: str) -> bytes:
        try:
            return self.msg_path(spool_id).read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read spooled message {spool_id} ({exc.strerror})") from None

    def read_envelope(self, spool_id: str) -> Envelope:
        try:
            data = self.env_path(spool_id).read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read envelope {spool_id} ({exc.strerror})") from None
        return Envelope.from_json(data)

    def update(self, envelope: Envelope) -> None:
        """Durably replace the envelope (delivery state). Blocking: call it in an executor."""
        tmp = self._tmp_env(envelope.id)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(envelope.to_json())
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.env_path(envelope.id))
            fsync_dir(self.directory)
        except OSError as exc:
            raise SpoolError(f"cannot update envelope {envelope.id} ({exc.strerror})") from None

    async def aupdate(self, envelope: Envelope) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.update, envelope)

    def dlv_path(self, spool_id: str) -> Path:
        return self.directory / f"{spool_id}.dlv"

    def mark_delivering(self, spool_id: str) -> None:
        os.close(os.open(self.dlv_path(spool_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def clear_delivering(self, spool_id: str) -> None:
        self.dlv_path(spool_id).unlink(missing_ok=True)

    def remove(self, spool_id: str, *, sync: bool = False) -> None:
        """Delete an entry: envelope first (the commit record), then message and marker."""
        for path in (self.env_path(spool_id), self.msg_path(spool_id), self.dlv_path(spool_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if sync:
            fsync_dir(self.directory)

    async def aremove(self, spool_id: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.remove, spool_id)

    def remove_many(self, spool_ids: list[str]) -> None:
        """Remove several entries (a thread's work: unlinks wait on the directory's fsyncs)."""
        for spool_id in spool_ids:
            self.remove(spool_id)

    def ids(self) -> list[str]:
        """Committed entries, oldest first."""
        out = []
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(".json") and ID_RE.fullmatch(name[:-5]):
                out.append(name[:-5])
        return sorted(out)

    # -- start-up (appliance/mail/spool_recovery.py) ---------------------------------------
    def check(self, spool_id: str) -> Envelope:
        """Read and verify one committed entry; raises SpoolError with the reason."""
        return spool_recovery.check(self, spool_id)

    def load(self) -> LoadReport:
        """Every complete entry, oldest first (`spool_recovery.load`)."""
        self._loaded = spool_recovery.load(self)
        return self._loaded

    def take_loaded(self) -> LoadReport | None:
        """The report of the last `load()` (the daemon may load before the worker starts), once."""
        report, self._loaded = self._loaded, None
        return report

    def quarantine(self, spool_id: str, reason: str) -> None:
        """Move an entry aside, never delivered (`spool_recovery.quarantine`)."""
        spool_recovery.quarantine(self, spool_id, reason)

    async def close(self) -> None:
        if self._committer is not None:
            while self._queue or self._busy:
                await asyncio.sleep(0.005)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        self._pool.shutdown(wait=True)
        self.unlock()

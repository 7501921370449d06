"""The delivery worker: relays spooled mail to the next hop, retries, bounces, cleans the spool.

Asyncio only (no smtplib in the loop): `delivery_concurrency` attempts run in parallel over
`upstream_pool.UpstreamPool` (sessions reused) or the local `Maildrop` (embedded default).

Per attempt, per recipient: 2xx delivered, 4xx (and any connection, TLS or protocol failure)
deferred and retried with exponential backoff (`retry_initial_seconds` doubling up to
`retry_max_seconds`), 5xx bounced; a recipient still deferred `lifetime_hours` after the message
arrived is bounced (4.4.7). Every outcome is an `email` row (`rows.email_rows`). Once no
recipient is pending, a DSN owed for bounced recipients is spooled (never for a null sender or a
DSN; it travels through `[smtp] return_route`, default the upstream), and a DSN that finally
fails is dropped: its `bounced` row (is_dsn) records it in metadata and `dsn_dropped` in the audit.

The spooled files are removed once delivery finished and every archive record of the message
(`record_ids`: subjects' copies) sits in a closed segment (`archive_closed`); until then the
entry stays with nothing pending and a waiter checks every few seconds.

At-least-once: `ID.dlv` is made before DATA and removed after the outcome is recorded; entries
found with it at start are counted (`possible_duplicates`, audited `spool_duplicates`): the
upstream may have answered 250 just before a crash, and then gets the message twice.

`queued` rows: the relay appends them right after `accept`. `Envelope.queued_rows` says they are
known durable; it is set when the envelope is next rewritten after a `flush_rows()` (the metadata
writer's `aflush`) has returned since the message was woken. At start, every entry without the
flag gets its `queued` rows again (so a row is never missing, and may at worst appear twice).

`lbm smtp queue retry|remove` talk to the running worker through `spool/requests/` files
(`retry-ID`, `retry-all`, `remove-ID`), polled every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from appliance.mail import dsn as dsn_mod
from appliance.mail.delivery_settings import (
    ConfigLike,
    DeliveryConfigError,
    DeliverySettings,
    Outcome,
    Transport,
    classify,
)
from appliance.mail.rows import email_rows
from appliance.mail.smtp_client import Reply, SmtpClientError
from appliance.mail.spool import ID_RE, Envelope, Spool, SpoolError, new_id
from store.audit import Action

__all__ = ["DeliveryConfigError", "DeliverySettings", "DeliveryWorker", "classify"]

ARCHIVE_POLL_SECONDS = 2.0
REQUEST_POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 20.0
HELD_BYTES_MAX = 64 * 1024 * 1024  # accepted messages kept in memory for their first attempt
MAX_SLEEP = 1.0  # the scheduler looks at the clock at least this often (fake clocks move)


class DeliveryWorker:
    def __init__(
        self,
        spool: Spool,
        cfg: ConfigLike,
        *,
        rows: Callable[[dict[str, Any]], bool],
        archive_closed: Callable[[str], bool],
        audit: Any,
        actor: str,
        clock: Any,
        gateway: str,
        flush_rows: Callable[[], Awaitable[None]] | None = None,
        settings: DeliverySettings | None = None,
    ) -> None:
        self.spool = spool
        self.settings = settings or DeliverySettings.from_config(cfg)
        self.rows = rows
        self.archive_closed = archive_closed
        self.audit = audit
        self.actor = actor
        self.clock = clock
        self.gateway = gateway
        self.flush_rows = flush_rows
        self.transport: Transport = self.settings.main_transport()
        route = self.settings.return_route
        self.dsn_transport: Transport = self.settings.transport(*route) if route else self.transport
        self._envs: dict[str, Envelope] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._ready: asyncio.Queue[str | None] = asyncio.Queue()
        self._kick = asyncio.Event()
        self._active: set[str] = set()
        self._waiting: set[str] = set()  # delivered, archive segment not closed yet
        self._bytes: dict[str, bytes] = {}  # first attempt's message, handed over by accept
        self._bytes_total = 0  # bounded by HELD_BYTES_MAX; beyond it, attempts read the spool
        self._doomed: list[str] = []  # finished entries whose files the remover deletes
        self._doomed_event = asyncio.Event()
        self._unconfirmed: set[str] = set()
        self._confirmed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.counts = {
            "delivered": 0,
            "deferred": 0,
            "bounced": 0,
            "dsn_spooled": 0,
            "dsn_dropped": 0,
            "possible_duplicates": 0,
            "quarantined": 0,
            "removed": 0,
        }

    # -- time ----------------------------------------------------------------------------
    def _now(self) -> float:
        value = self.clock.now() if self.clock is not None else datetime.now(UTC)
        return float(value.timestamp())

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Resume the spool and start the tasks (in the running loop)."""
        loop = asyncio.get_running_loop()
        report = self.spool.take_loaded() or self.spool.load()
        self.counts["quarantined"] += len(report.quarantined)
        if report.possible_duplicates:
            self.counts["possible_duplicates"] += report.possible_duplicates
            self._audit(Action.SPOOL_DUPLICATES, count=report.possible_duplicates)
        for env in report.entries:
            self._envs[env.id] = env
            if not env.queued_rows:
                self._emit(env, "queued", env.rcpts, ts=env.received)
                self._unconfirmed.add(env.id)
            if env.pending or (env.bounced and not env.dsn_sent):
                self._schedule(env)
            else:
                self._waiting.add(env.id)
        self.spool.requests_dir.mkdir(mode=0o700, exist_ok=True)
        self._tasks = [loop.create_task(self._scheduler(), name="smtp-scheduler")]
        self._tasks += [
            loop.create_task(self._work(), name=f"smtp-delivery-{n}")
            for n in range(self.settings.concurrency)
        ]
        self._tasks.append(loop.create_task(self._archive_waiter(), name="smtp-archive-wait"))
        self._tasks.append(loop.create_task(self._remover(), name="smtp-spool-remover"))
        self._tasks.append(loop.create_task(self._requests(), name="smtp-queue-requests"))
        if self.flush_rows is not None:
            self._tasks.append(loop.create_task(self._confirmer(), name="smtp-rows-confirm"))

    def wake(self, envelope_id: str) -> None:
        """A new message was accepted: deliver it now."""
        taken = self.spool.take_recent(envelope_id)
        if taken is None:
            try:
                env = self.spool.read_envelope(envelope_id)
            except SpoolError:
                return
        else:
            env, message = taken
            if message is not None:
                self._hold(env.id, message)
        self._envs[env.id] = env
        self._unconfirmed.add(env.id)
        self._ready.put_nowait(env.id)

    async def stop(self) -> None:
        """Finish the attempts in progress, leave the rest spooled."""
        self._stopping = True
        workers = [t for t in self._tasks if t.get_name().startswith("smtp-delivery-")]
        for _ in workers:
            self._ready.put_nowait(None)
        if workers:
            # an attempt stuck on a silent upstream is cut after the grace period; its entry
            # stays spooled with its `.dlv` marker (counted as a possible duplicate at start)
            _, stuck = await asyncio.wait(workers, timeout=STOP_GRACE_SECONDS)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush_removals()
        await self.transport.close()
        if self.dsn_transport is not self.transport:
            await self.dsn_transport.close()

    @property
    def queued(self) -> int:
        return len(self._envs)

    # -- scheduling ----------------------------------------------------------------------
    def _schedule(self, env: Envelope) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (env.next_try, self._seq, env.id))
        self._kick.set()

    async def _scheduler(self) -> None:
        # not `while True`: Python 3.11's wait_for can swallow the cancellation from stop()
        # when the kick arrives at the same moment, and the loop would then never end
        while not self._stopping:
            now = self._now()
            while self._heap and self._heap[0][0] <= now:
                _, _, spool_id = heapq.heappop(self._heap)
                env = self._envs.get(spool_id)
                if env is not None and env.next_try <= now:
                    self._ready.put_nowait(spool_id)
            delay = MAX_SLEEP
            if self._heap:
                delay = max(0.0, min(MAX_SLEEP, self._heap[0][0] - now))
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)

    async def _work(self) -> None:
        while True:
            spool_id = await self._ready.get()
            if spool_id is None or self._stopping:
                return
            env = self._envs.get(spool_id)
            if env is None or spool_id in self._active:
                continue
            self._active.add(spool_id)
            try:
                await self._attempt(env)
            except Exception as exc:  # one message's trouble never stops the worker
                await self._trouble(env, exc)
            finally:
                self._active.discard(spool_id)

    async def _trouble(self, env: Envelope, exc: Exception) -> None:
        """An attempt failed outside SMTP (e.g. the spool became unreadable): try again later,
        or quarantine the entry if its message is gone or altered."""
        kind = type(exc).__name__
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.spool.check, env.id)
        except SpoolError as broken:
            self._envs.pop(env.id, None)
            self._release(env.id)
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(
                    None, self.spool.quarantine, env.id, str(broken)
                )
            self.counts["quarantined"] += 1
            return
        print(f"lbm smtp: delivery of {env.id} failed ({kind}); retrying later", flush=True)
        env.next_try = self._now() + self.settings.backoff(max(1, env.attempts))
        self._schedule(env)

    # -- one attempt ---------------------------------------------------------------------
    async def _attempt(self, env: Envelope) -> None:
        loop = asyncio.get_running_loop()
        if env.pending:
            # file system calls wait on the journal while the spool's fsyncs run: in a thread
            message = await loop.run_in_executor(None, self._prepare, env.id, self._release(env.id))
            env.attempts += 1
            transport = self.dsn_transport if env.is_dsn else self.transport
            try:
                result = await transport.send(env.mail_from, list(env.pending), message)
                outcome = classify(list(env.pending), result)
            except SmtpClientError as exc:
                outcome = self._failed_session(env, exc)
            self._record(env, outcome, transport.name)
            if env.pending and self._now() >= env.received + self.settings.lifetime:
                self._expire(env, transport.name)
            if env.pending:
                await loop.run_in_executor(None, self.spool.clear_delivering, env.id)
                env.next_try = self._now() + self.settings.backoff(env.attempts)
                env.next_try = min(env.next_try, env.received + self.settings.lifetime)
                self._flag_rows(env)
                await self.spool.aupdate(env)
                self._schedule(env)
                return
        await self._finish(env)

    def _hold(self, spool_id: str, message: bytes) -> None:
        if self._bytes_total + len(message) <= HELD_BYTES_MAX:
            self._bytes[spool_id] = message
            self._bytes_total += len(message)

    def _release(self, spool_id: str) -> bytes | None:
        message = self._bytes.pop(spool_id, None)
        if message is not None:
            self._bytes_total -= len(message)
        return message

    def _prepare(self, spool_id: str, message: bytes | None) -> bytes:
        if message is None:
            message = self.spool.read_message(spool_id)
        self.spool.mark_delivering(spool_id)
        return message

    def _failed_session(self, env: Envelope, exc: SmtpClientError) -> Outcome:
        reply = exc.reply
        rcpts = list(env.pending)
        if reply is not None and not exc.temporary:
            status = reply.status or "5.0.0"
            return Outcome([], [], [(r, reply, status) for r in rcpts])
        status = (reply.status if reply else None) or "4.4.1"
        # the reason is kept for a later DSN: host and step only (SmtpClientError's text)
        for rcpt in rcpts:
            env.failures[rcpt] = f"{status} {exc}"[:300]
        return Outcome([], [(r, reply, status) for r in rcpts], [])

    def _record(self, env: Envelope, outcome: Outcome, upstream: str) -> None:
        now = self._now()
        for rcpt, reply in outcome.delivered:
            self._emit(env, "delivered", [rcpt], ts=now, reply=reply, upstream=upstream)
            env.failures.pop(rcpt, None)
        for rcpt, maybe, status in outcome.deferred:
            self._emit(
                env, "deferred", [rcpt], ts=now, reply=maybe, status=status, upstream=upstream
            )
            if maybe is not None:
                env.failures[rcpt] = maybe.line()
        for rcpt, maybe, status in outcome.bounced:
            self._emit(
                env, "bounced", [rcpt], ts=now, reply=maybe, status=status, upstream=upstream
            )
            env.failures[rcpt] = maybe.line() if maybe is not None else f"{status} failed"
        done = {r for r, _ in outcome.delivered} | {r for r, _, _ in outcome.bounced}
        env.bounced += [r for r, _, _ in outcome.bounced if r not in env.bounced]
        env.pending = [r for r in env.pending if r not in done]
        self.counts["delivered"] += len(outcome.delivered)
        self.counts["deferred"] += len(outcome.deferred)
        self.counts["bounced"] += len(outcome.bounced)

    def _expire(self, env: Envelope, upstream: str) -> None:
        hours = self.settings.lifetime / 3600
        for rcpt in env.pending:
            last = env.failures.get(rcpt, "4.4.1 no answer from the next hop")
            env.failures[rcpt] = f"4.4.7 still undelivered after {hours:g} hours (last: {last})"
        self._emit(env, "bounced", env.pending, ts=self._now(), status="4.4.7", upstream=upstream)
        self.counts["bounced"] += len(env.pending)
        env.bounced += [r for r in env.pending if r not in env.bounced]
        env.pending = []

    async def _finish(self, env: Envelope) -> None:
        """Nothing pending: DSN if owed, then remove (or wait for the archive)."""
        loop = asyncio.get_running_loop()
        if env.bounced and not env.dsn_sent:
            if env.is_dsn:
                self.counts["dsn_dropped"] += 1
                await loop.run_in_executor(
                    None,
                    lambda: self._audit(
                        Action.DSN_DROPPED,
                        spool_id=env.id,
                        status=dsn_mod.status_of(env.failures.get(env.rcpts[0], "")),
                    ),
                )
            elif env.mail_from:
                await self._send_dsn(env)
            env.dsn_sent = True
        if env.record_ids and not self._archived(env):
            self._flag_rows(env)
            await self.spool.aupdate(env)  # nothing pending, durably: never delivered again
            await loop.run_in_executor(None, self.spool.clear_delivering, env.id)
            self._waiting.add(env.id)
            return
        await self._remove(env)

    async def _send_dsn(self, env: Envelope) -> None:
        loop = asyncio.get_running_loop()
        message = await loop.run_in_executor(None, self.spool.read_message, env.id)
        now = self.clock.now() if self.clock is not None else datetime.now(UTC)
        body = dsn_mod.build_dsn(env, message, reporting_mta=self.settings.helo_name, now=now)
        dsn_env = dsn_mod.dsn_envelope(env, new_id(), self._now(), len(body))
        await self.spool.accept(dsn_env, body)
        self.spool.take_recent(dsn_env.id)
        self._envs[dsn_env.id] = dsn_env
        self._hold(dsn_env.id, body)
        self._emit(dsn_env, "queued", dsn_env.rcpts, ts=dsn_env.received)
        self._unconfirmed.add(dsn_env.id)
        self.counts["dsn_spooled"] += 1
        env.dsn_sent = True
        await self.spool.aupdate(env)
        self._ready.put_nowait(dsn_env.id)

    def _archived(self, env: Envelope) -> bool:
        try:
            return all(self.archive_closed(record) for record in env.record_ids)
        except Exception:  # the archive cannot tell: keep the file (never lose a subject's copy)
            return False

    async def _remove(self, env: Envelope) -> None:
        """Forget the entry and queue its files for the remover (unlinks wait on the spool's
        directory fsyncs, so they are batched in a thread, never done in the loop)."""
        self._doomed.append(env.id)
        self._doomed_event.set()
        self._release(env.id)
        self._envs.pop(env.id, None)
        self._waiting.discard(env.id)
        self._unconfirmed.discard(env.id)
        self._confirmed.discard(env.id)

    # -- rows and audit ------------------------------------------------------------------
    def _emit(
        self,
        env: Envelope,
        outcome: str,
        rcpts: list[str],
        *,
        ts: float,
        reply: Reply | None = None,
        status: str | None = None,
        upstream: str | None = None,
    ) -> None:
        for row in email_rows(
            env,
            outcome,
            rcpts=rcpts,
            gateway=self.gateway,
            ts=ts,
            smtp_code=reply.code if reply is not None else None,
            smtp_status=status or (reply.status if reply is not None else None),
            attempt=env.attempts,
            upstream=upstream,
        ):
            self.rows(row)  # a refused row is counted and audited by the writer (metadata_gap)

    def _flag_rows(self, env: Envelope) -> None:
        if env.id in self._confirmed:
            env.queued_rows = True

    def _audit(self, action: Action, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(action, self.actor, **fields)
        except Exception as exc:  # the audit log's own failure is reported, delivery goes on
            print(f"lbm smtp: audit {action.value} failed ({type(exc).__name__})", flush=True)

    # -- background ----------------------------------------------------------------------
    async def _confirmer(self) -> None:
        assert self.flush_rows is not None
        while True:
            await asyncio.sleep(1.0)
            if not self._unconfirmed:
                continue
            batch, self._unconfirmed = self._unconfirmed, set()
            try:
                await self.flush_rows()
            except Exception:
                self._unconfirmed |= batch
                continue
            self._confirmed |= {i for i in batch if i in self._envs}

    async def _remover(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._doomed_event.wait()
            self._doomed_event.clear()
            batch, self._doomed = self._doomed, []
            if not batch:
                continue
            try:
                await self._rows_durable()
                await loop.run_in_executor(None, self.spool.remove_many, batch)
            except asyncio.CancelledError:
                # stop() cancelled us mid-batch: hand the batch back so its final
                # _flush_removals removes it (removal is idempotent); dropped, a delivered
                # message would stay spooled and go out again at the next start
                self._doomed = batch + self._doomed
                raise

    async def _rows_durable(self) -> None:
        """The spool entry is the durable record of a message until its rows are: removing it
        first would lose the queued/delivered rows of a crash in the next second (mail-e2e's
        kill -9 test counts them). So every row appended so far is flushed before a batch of
        removals. A failed flush is the writer's to audit (metadata_gap)."""
        if self.flush_rows is not None:
            with contextlib.suppress(Exception):
                await self.flush_rows()

    async def _flush_removals(self) -> None:
        batch, self._doomed = self._doomed, []
        if batch:
            await self._rows_durable()
            await asyncio.get_running_loop().run_in_executor(None, self.spool.remove_many, batch)

    async def remove_sealed(self) -> None:
        """At stop, after the archive sealed its segments: remove the delivered entries that
        were waiting for their segment, so the spool keeps only mail still in transit."""
        for spool_id in sorted(self._waiting):
            env = self._envs.get(spool_id)
            if env is not None and spool_id not in self._active and self._archived(env):
                await self._remove(env)
        await self._flush_removals()

    async def _archive_waiter(self) -> None:
        while True:
            await asyncio.sleep(ARCHIVE_POLL_SECONDS)
            for spool_id in sorted(self._waiting):
                env = self._envs.get(spool_id)
                if env is None:
                    self._waiting.discard(spool_id)
                elif spool_id not in self._active and self._archived(env):
                    await self._remove(env)

    async def _requests(self) -> None:
        while True:
            await asyncio.sleep(REQUEST_POLL_SECONDS)
            try:
                names = sorted(p.name for p in self.spool.requests_dir.iterdir())
            except OSError:
                continue
            for name in names:
                await self._request(name)

    async def _request(self, name: str) -> None:
        path = self.spool.requests_dir / name
        verb, _, spool_id = name.partition("-")
        if spool_id != "all" and not ID_RE.fullmatch(spool_id):
            path.unlink(missing_ok=True)  # not a request the queue CLI makes: ignored
            return
        if verb == "retry":
            targets = list(self._envs) if spool_id == "all" else [spool_id]
            for target in targets:
                env = self._envs.get(target)
                if env is not None and target not in self._active and env.pending:
                    env.next_try = 0.0
                    self._ready.put_nowait(target)
        elif verb == "remove":
            if spool_id in self._active:
                return  # after the attempt in progress
            env = self._envs.pop(spool_id, None)
            self._release(spool_id)
            if env is not None:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self.spool.remove(spool_id, sync=True)
                )
                self._waiting.discard(spool_id)
                self.counts["removed"] += 1
        path.unlink(missing_ok=True)

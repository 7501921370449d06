"""Encrypted archives: the channels' `open_record` / `write` / `close` API over segments.

An archive belongs to one authorisation (archive/REF/). Records stream into segments
(store/segment.py), each an age file encrypted to a fresh segment key that only the
authorisation key can unwrap (store/keys.py); a sealed segment gets a signed manifest in the
archive's chain (store/manifest.py).

Concurrency: a record being streamed holds its segment. A second record for the same reference
opened meanwhile does not wait: it goes to another open segment of that archive, created if
none is free, so a slow record never stalls the others. Segments close at `segment_max_bytes`
or `segment_max_age` after their first record (checked by `tick()`, which the daemons call
about once a second, and when a record ends); a segment whose record is still streaming closes
as soon as that record ends. Records never span segments.

Failures raise `store.ArchiveError` with no content in the message. A segment that failed is
abandoned: it never gets a normal manifest; it is sealed as truncated at once if possible, else
by `recover()` on the next start, which audits SEGMENT_TRUNCATED.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from store import ArchiveError, KeyError_, StoreError
from store import agefile as age
from store import manifest as chain
from store.actor import current_actor
from store.audit import Action, AuditLog
from store.clock import Clock, format_utc
from store.fsutil import ensure_dir
from store.keys import KeyStore, check_ref
from store.paths import DataPaths
from store.record_sink import RecordSink, RecordTarget
from store.recovery import Sealer, closing_fields
from store.segment import SegmentWriter, claim, io_message
from store.signing import GatewayKey

__all__ = ["CHANNELS", "Archive", "RecordSink", "RecordTarget"]

CHANNELS = ("web", "email", "packets")
TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
EXTRA_VALUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
RESERVED_HEADER = frozenset({"id", "channel", "kind", "ts", "principal", "length", "framing"})
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class _Open:
    writer: SegmentWriter
    recipient_fp: str
    auth_fp: str
    opened_at: datetime
    first_at: datetime | None = None
    busy: bool = False
    due: bool = False
    principals: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    first_ts: str | None = None
    last_ts: str | None = None


class _SegmentRecord:
    """The `RecordTarget` a sink is handed: the current record of one open segment, with the
    archive's failure and sealing policy bound in as two callables (nothing else of Archive)."""

    def __init__(
        self,
        seg: _Open,
        on_end: Callable[[_Open, bool], None],
        on_failure: Callable[[_Open], None],
    ) -> None:
        self._seg = seg
        self._on_end = on_end
        self._on_failure = on_failure

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._seg.writer.write(data)
        except ArchiveError:
            self._on_failure(self._seg)
            raise

    def end(self, *, aborted: bool) -> None:
        self._on_end(self._seg, aborted)


class Archive:
    def __init__(
        self,
        paths: DataPaths,
        gateway_key: GatewayKey,
        clock: Clock,
        *,
        audit: AuditLog | None = None,
        segment_max_bytes: int = DEFAULT_MAX_BYTES,
        segment_max_age: timedelta | float = timedelta(seconds=60),
        actor: str | None = None,
    ) -> None:
        self.paths = paths
        self.key = gateway_key
        self.clock = clock
        self.audit = audit
        self.keystore = KeyStore(paths)
        self.max_bytes = segment_max_bytes
        self.max_age = (
            segment_max_age
            if isinstance(segment_max_age, timedelta)
            else timedelta(seconds=segment_max_age)
        )
        self.actor = actor or current_actor()
        self._lock = threading.Lock()
        self._open: dict[str, list[_Open]] = {}
        self._closing = False

    # -- writing ---------------------------------------------------------------------------
    def open_record(
        self,
        ref: str,
        channel: str,
        principal: str | None,
        ts: datetime | str,
        kind: str,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> RecordSink:
        """`extra`: channel fields added to the record's header (web: `flow`, the mitmproxy flow
        id, and `scheme`); they never replace the framing's own fields."""
        try:
            check_ref(ref)
        except KeyError_ as exc:
            raise ArchiveError(str(exc)) from None
        if channel not in CHANNELS:
            raise ArchiveError(f"record for {ref}: unknown channel {channel!r}")
        if not TOKEN_RE.fullmatch(kind):
            raise ArchiveError(f"record for {ref}: kind {kind!r} must match [a-z0-9][a-z0-9._-]*")
        if principal is not None and not TOKEN_RE.fullmatch(principal):
            raise ArchiveError(f"record for {ref}: principal is not a principal id")
        ts_text = format_utc(ts) if isinstance(ts, datetime) else ts
        for key, value in (extra or {}).items():
            if (
                key in RESERVED_HEADER
                or not TOKEN_RE.fullmatch(key)
                or not isinstance(value, str)
                or not EXTRA_VALUE_RE.fullmatch(value)
            ):
                raise ArchiveError(f"record for {ref}: bad extra header field {key!r}")
        seg = self._acquire(ref)
        try:
            record_id = seg.writer.begin_record(channel, kind, ts_text, principal, extra)
        except ArchiveError:
            self._abandon(seg)
            raise
        seg.principals.add(principal or "")
        seg.channels.add(channel)
        seg.kinds.add(kind)
        seg.first_ts = min(seg.first_ts or ts_text, ts_text)
        seg.last_ts = max(seg.last_ts or ts_text, ts_text)
        if seg.first_at is None:
            seg.first_at = self.clock.now()
        return RecordSink(_SegmentRecord(seg, self._end_record, self._abandon), record_id)

    def _acquire(self, ref: str) -> _Open:
        with self._lock:
            if self._closing:
                raise ArchiveError("archive is closed")
            for seg in self._open.get(ref, []):
                if not seg.busy and not seg.due:
                    seg.busy = True
                    return seg
        seg = self._new_segment(ref)
        with self._lock:
            self._open.setdefault(ref, []).append(seg)
        return seg

    def _new_segment(self, ref: str) -> _Open:
        try:
            auth_public = self.keystore.authorisation_public(ref)
        except KeyError_ as exc:
            raise ArchiveError(f"archive {ref}: {exc}") from None
        directory = self.paths.archive / ref
        try:
            ensure_dir(self.paths.archive)
            with chain.archive_lock(directory):
                number, fd = claim(directory)
        except OSError as exc:
            raise ArchiveError(
                f"archive {ref}: cannot create a segment: {io_message(exc)}"
            ) from None
        try:
            recipient, seg_fp = self.keystore.new_segment_key(ref, number)
        except (OSError, KeyError_) as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                (directory / f"{number:06d}.age").unlink()
            why = io_message(exc) if isinstance(exc, OSError) else str(exc)
            raise ArchiveError(f"archive {ref}: cannot store segment key: {why}") from None
        writer = SegmentWriter(directory, ref, number, fd, recipient)
        del recipient
        return _Open(
            writer, seg_fp, age.recipient_fingerprint(auth_public), self.clock.now(), busy=True
        )

    def _end_record(self, seg: _Open, aborted: bool) -> None:
        try:
            seg.writer.end_record(aborted=aborted)
        except ArchiveError:
            self._abandon(seg)
            raise
        with self._lock:
            seg.busy = False
            if seg.writer.offset >= self.max_bytes or self._is_old(seg):
                seg.due = True
            seal = seg.due or self._closing
            if seal:
                self._remove(seg)
        if seal:
            self._seal(seg)

    def _is_old(self, seg: _Open) -> bool:
        return seg.first_at is not None and self.clock.now() - seg.first_at >= self.max_age

    def _remove(self, seg: _Open) -> None:
        items = self._open.get(seg.writer.ref, [])
        if seg in items:
            items.remove(seg)
        if not items:
            self._open.pop(seg.writer.ref, None)

    def _seal(self, seg: _Open) -> str:
        w = seg.writer
        try:
            w.finish()
            fields: dict[str, Any] = {
                "ref": w.ref,
                "segment": w.number,
                "file": w.path.name,
                "principals": sorted(p for p in seg.principals if p),
                "channels": sorted(seg.channels),
                "kinds": sorted(seg.kinds),
                "first_ts": seg.first_ts,
                "last_ts": seg.last_ts,
                "opened_at": format_utc(seg.opened_at),
                "closed_at": format_utc(self.clock.now()),
                "records": len(w.records),
                "ciphertext_sha256": w.ciphertext_sha256,
                "ciphertext_bytes": w.ciphertext_bytes,
                "plaintext_bytes": w.offset,
                "index_sha256": chain.sha256_file(w.index_path),
                "segment_key_fingerprint": seg.recipient_fp,
                "authorisation_key_fingerprint": seg.auth_fp,
                "truncated": False,
            }
            with chain.archive_lock(w.directory):
                digest, seq = chain.append(w.directory, self.key, fields)
        except (ArchiveError, OSError) as exc:
            w.release()
            self._try_seal_truncated(w.directory, w.number)
            if isinstance(exc, OSError):
                raise ArchiveError(f"{w.where}: cannot seal: {io_message(exc)}") from None
            raise
        w.release()
        if self.audit is not None:
            try:
                self.audit.append(
                    Action.SEGMENT_CLOSE,
                    self.actor,
                    refs=(w.ref,),
                    **closing_fields(fields, digest, seq),
                )
            except StoreError as exc:
                raise ArchiveError(
                    f"{w.where}: sealed, but its audit entry failed: {exc}"
                ) from None
        return f"{w.ref}/{w.name}"

    def _abandon(self, seg: _Open) -> None:
        with self._lock:
            self._remove(seg)
        seg.writer.release()
        self._try_seal_truncated(seg.writer.directory, seg.writer.number)

    def _try_seal_truncated(self, directory: Path, number: int) -> None:
        with (
            contextlib.suppress(ArchiveError, OSError, age.AgeError),
            chain.archive_lock(directory),
        ):
            self._seal_truncated(directory, number, "write failed")

    def tick(self) -> list[str]:
        """Close segments older than `segment_max_age`; returns the sealed segment ids."""
        to_seal: list[_Open] = []
        with self._lock:
            for items in list(self._open.values()):
                for seg in list(items):
                    if self._is_old(seg):
                        seg.due = True
                        if not seg.busy:
                            self._remove(seg)
                            to_seal.append(seg)
        return self._seal_all(to_seal)

    close_due = tick

    def _seal_all(self, segments: list[_Open]) -> list[str]:
        """Seal each; one failure does not stop the others. Raises the first error at the end."""
        sealed: list[str] = []
        errors: list[ArchiveError] = []
        for seg in segments:
            try:
                sealed.append(self._seal(seg))
            except ArchiveError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return sealed

    def close(self) -> list[str]:
        """Seal every idle segment; a segment whose record is still streaming is sealed when
        that record closes. No new records are accepted."""
        to_seal: list[_Open] = []
        with self._lock:
            self._closing = True
            for items in list(self._open.values()):
                for seg in list(items):
                    seg.due = True
                    if not seg.busy:
                        self._remove(seg)
                        to_seal.append(seg)
        return self._seal_all(to_seal)

    def open_segments(self) -> list[str]:
        with self._lock:
            return [f"{s.writer.ref}/{s.writer.name}" for v in self._open.values() for s in v]

    # -- queries -----------------------------------------------------------------------------
    def segment_closed(self, record_id: str) -> bool:
        """True once the segment holding `record_id` is sealed (manifest written, fsynced)."""
        ref, _, rest = record_id.partition("/")
        name = rest.partition("/")[0]
        return (self.paths.archive / check_ref(ref) / f"{name}.manifest.json").exists()

    # -- recovery ----------------------------------------------------------------------------
    def recover(
        self, ref: str | None = None, *, trigger: str = "start", exclude: Container[str] = ()
    ) -> list[str]:
        """Seal every segment left without a manifest by a crash (no writer holds it) as
        truncated, and audit each (store/recovery.py). Returns the segment ids sealed."""
        return self._sealer.recover(self.paths.archive, ref, trigger=trigger, exclude=exclude)

    def _seal_truncated(self, directory: Path, number: int, reason: str) -> bool:
        """Caller holds the archive lock. Returns True if a truncated manifest was written."""
        return self._sealer.seal_truncated(directory, number, reason)

    @property
    def _sealer(self) -> Sealer:
        return Sealer(self.key, self.keystore, self.clock, self.audit, self.actor)

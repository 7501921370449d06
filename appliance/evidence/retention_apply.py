"""Remove what retention made due (`retention.plan`), audited, and the daily housekeeping check.

- Metadata: each due partition directory is deleted and its parent directory fsynced; one
  `purge` entry per stream names the dates and the number of files removed.
- Archives are crypto-shredded: every wrapped key of keystore/REF (auth.age first, then each
  segment's) is overwritten, unlinked and the directory fsynced (`store.keys.shred`), the
  authorisation's public key removed and a `destroyed` marker left so nothing is archived to it
  again; then one `purge` entry (refs [REF]) names the segments, `crypto_shredded: true` and
  `whole_archive: true` (which `lbm archive verify` accepts for the whole archive); only then
  are the segment, index and manifest files deleted. A run cut off midway is finished by the
  next one: whatever is left of the archive is still due.
- Every run, dry or applied, is audited as `retention_run` with its counts.

Holds are read again just before each archive is removed, so a hold placed while a run was
listing still blocks it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from datetime import datetime
from typing import Any

from appliance.evidence import holds as holds_mod
from appliance.evidence.retention import Partition, Plan, Settings, plan
from store import StoreError
from store.archive_upload import delete_remote_archive
from store.audit import Action, AuditLog
from store.fsutil import atomic_write, fsync_dir
from store.keys import KeyStore, shred
from store.paths import DataPaths
from store.recovery import live_segments


class RetentionError(Exception):
    """Something due could not be removed; the message names it."""


def _purge_partitions(
    paths: DataPaths, items: list[Partition], audit: AuditLog, actor: str
) -> dict[str, int]:
    removed: dict[str, list[Partition]] = {}
    for item in items:
        shutil.rmtree(item.path)
        fsync_dir(item.path.parent)
        removed.setdefault(item.stream, []).append(item)
    for stream, parts in sorted(removed.items()):
        audit.append(
            Action.PURGE,
            actor,
            kind="metadata",
            stream=stream,
            dates=[p.date for p in parts],
            files=sum(p.files for p in parts),
        )
    return {s: len(p) for s, p in removed.items()}


def destroy_keys(paths: DataPaths, ref: str) -> int:
    """Shred every wrapped key of REF (auth.age first), fsynced; refuse while a writer holds
    one of REF's segments. Returns how many wrapped keys existed."""
    directory = paths.archive / ref
    live = live_segments(directory) if directory.is_dir() else []
    if live:
        raise RetentionError(f"{ref}: segment {live[0]:06d} is held by a running writer")
    keys = paths.keystore / ref
    if not keys.is_dir():
        return 0
    destroyed = 0
    for path in sorted(keys.glob("*.age"), key=lambda p: (p.name != "auth.age", p.name)):
        destroyed += shred(path)
    (keys / "auth.pub").unlink(missing_ok=True)
    atomic_write(keys / "destroyed", b"", 0o600)
    fsync_dir(keys)
    # the keystore bucket's copies ([store] keystore_root); unreachable: the tombstone above
    # makes the next upload pass delete them, and nothing reads a key past it meanwhile
    KeyStore(paths).shred_remote(ref, "*")
    return destroyed


def remove_files(paths: DataPaths, ref: str) -> int:
    """Delete REF's (now unreadable) segment, index and manifest files; returns their count."""
    directory = paths.archive / ref
    if not directory.is_dir():
        return 0
    files = sum(1 for p in directory.rglob("*") if p.is_file())
    remote = delete_remote_archive(paths)  # uploaded copies, where the bucket allows it
    if remote is not None:  # keys are shredded: what a bucket keeps cannot be opened
        with contextlib.suppress(StoreError, OSError):
            files += remote(ref)
    shutil.rmtree(directory)
    fsync_dir(paths.archive)
    return files


def apply(
    conn: sqlite3.Connection,
    paths: DataPaths,
    result: Plan,
    audit: AuditLog,
    actor: str,
) -> dict[str, Any]:
    """Remove everything `result` lists as due; audit each removal. Returns counts.

    An archive's purge is audited between the key destruction and the file deletion: a crash
    before the entry leaves the files, so the next run shreds again and records it; a crash
    after it leaves only ciphertext whose keys are gone, which the next run deletes."""
    streams = _purge_partitions(paths, result.due_partitions, audit, actor)
    shredded: list[str] = []
    errors: list[str] = []
    for item in result.due_archives:
        if item.ref in holds_mod.active_holds(conn):  # placed since the plan was made
            item.status, item.why = "held", "evidence hold placed during the run"
            continue
        try:
            destroyed = destroy_keys(paths, item.ref)
            audit.append(
                Action.PURGE,
                actor,
                refs=(item.ref,),
                kind="archive",
                ref=item.ref,
                segments=[f"{item.ref}/{n:06d}" for n in item.segments],
                crypto_shredded=True,
                whole_archive=True,
                why=item.why,
                keys_destroyed=destroyed,
            )
            remove_files(paths, item.ref)
        except (RetentionError, OSError) as exc:
            errors.append(f"{item.ref}: {exc}")
            continue
        shredded.append(item.ref)
    return {"metadata_partitions": streams, "archives_shredded": shredded, "errors": errors}


def run(
    conn: sqlite3.Connection,
    paths: DataPaths,
    settings: Settings,
    now: datetime,
    audit: AuditLog,
    actor: str,
    *,
    do_apply: bool,
    trigger: str,
) -> tuple[Plan, dict[str, Any] | None]:
    """Plan, apply when asked, and audit the run (`retention_run`, counts and refs only)."""
    result = plan(conn, paths, settings, now)
    counts = result.counts()
    applied = apply(conn, paths, result, audit, actor) if do_apply else None
    audit.append(
        Action.RETENTION_RUN,
        actor,
        refs=[a.ref for a in result.due_archives],
        applied=do_apply,
        trigger=trigger,
        **counts,
        archives_shredded=len(applied["archives_shredded"]) if applied else 0,
        errors=len(applied["errors"]) if applied else 0,
    )
    return result, applied


STATE_FILE = "retention-check.json"


def daily(
    conn: sqlite3.Connection,
    paths: DataPaths,
    settings: Settings,
    now: datetime,
    audit: AuditLog,
    actor: str,
    *,
    auto_apply: bool,
) -> dict[str, Any] | None:
    """The housekeeping check: once per UTC day (remembered in run/), applied only with
    `[retention] auto_apply`. None when today's check is done already."""
    state = paths.run / STATE_FILE
    today = now.date().isoformat()
    try:
        if json.loads(state.read_text()).get("day") == today:
            return None
    except (OSError, ValueError, AttributeError):
        pass
    result, applied = run(
        conn, paths, settings, now, audit, actor, do_apply=auto_apply, trigger="housekeeping"
    )
    paths.run.mkdir(parents=True, exist_ok=True)
    atomic_write(state, json.dumps({"day": today}).encode(), 0o600)
    return {"counts": result.counts(), "applied": applied}

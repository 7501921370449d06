"""Start-up recovery of a metadata writer: roll interrupted rounds and compactions forward and
read the journal's accepted rows back, so the engine publishes them as Parquet.

Order matters: a leftover compaction record and round commit record are rolled forward first;
then the writer's own file names are scanned (highest SEQ, files per hour; hidden leftovers of
crashed writes are deleted); then the journal frames not already published by the recovered
round (same generation, frame number up to the recorded one) are decoded into batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from store import compact as cp
from store.convert import conform
from store.journal import Journal, decode_batches

log = logging.getLogger("lbm.store.metadata")


@dataclass
class Recovered:
    """What start-up found: the next SEQ to use, own files per hour, rows to publish."""

    seq: int
    hour_files: dict[tuple[str, int], int]
    pending: dict[str, list[pa.RecordBatch]] = field(default_factory=dict)
    rows: int = 0


def recover(
    root: Path, commit: Path, compact_commit: Path, journal: Journal, gateway: str, writer: str
) -> Recovered:
    """Roll forward what a crash left half-done and return the journal's rows to publish."""
    cp.recover_compaction(compact_commit, root)
    done = cp.recover_round(root, commit)
    seq, hour_files = cp.scan_own(root, gateway, writer)
    found = Recovered(seq, hour_files)
    frames = journal.read()
    if journal.discarded:
        log.warning("journal %s: ignored %d bytes of torn tail", journal.path, journal.discarded)
    for frame in frames:
        if done and done[0] == journal.generation and frame.seq <= done[1]:
            continue  # published by the round that was rolled forward
        stream, batches = decode_batches(frame.payload)
        batches = [b for batch in batches for b in conform(stream, batch).to_batches()]
        found.pending.setdefault(stream, []).extend(batches)
        found.rows += sum(b.num_rows for b in batches)
    if found.rows:
        log.info("journal %s: replaying %d rows into Parquet", journal.path, found.rows)
    return found

"""Which capture files were replayed into a data directory, so a second replay of the same
file (which would duplicate its flow and dns rows) is refused unless asked for (`--again`).

The record is `journal/replayed.jsonl` in the data directory: it belongs with the metadata
journals because it says which rows the metadata already holds. One JSON line per event,
mode 0600, appended under an exclusive `flock` (two replays of one file at the same time:
the second is refused):

    {"event": "started", "run": ID, "size": N, "edges": HEX, "sha256": HEX or null,
     "file": PATH, "at": ISO8601, "again": false}
    {"event": "done", "run": ID, "size": N, "sha256": HEX, "file": PATH, "at": ISO8601,
     "packets": N, "flows": N, "dns_rows": N}
    {"event": "aborted", "run": ID, "size": N, "file": PATH, "at": ISO8601}

A file is identified by its content (SHA-256 and size), not its name: a renamed or copied
capture is still the same capture. Hashing a large capture before replaying it would cost a
pass over the file before the first packet, so the SHA-256 is computed while the replay
runs, by a child process hashing the same open file (`capture.read.childhash.ChildHash`),
or when no child can start from the bytes the replay's reader reads
(`capture.read.filehash.FileHash`; what the reader skips or never reaches is read there by
pread), and recorded in "done": always the SHA-256 of the whole file, whatever the reader
made of it.
The decision is made before the first row with a cheap pre-key, `edges`: the SHA-256 of the
file's first and last MiB (of all of it, which is then its SHA-256, for files up to 2 MiB).
A file whose size and edges match no earlier replay is new whatever its middle holds; only
when they match one is the whole file hashed first (while the ledger is locked) and compared
with that replay's SHA-256: equal is refused, different (the same edges, another middle) is
replayed. An earlier replay with the same size and edges whose SHA-256 was never recorded (it
is still running, or it was cut off by a crash: its rows may be partly written) refuses too:
its content cannot be told apart, and `--again` overrides. "started" is written before the
first row, so a replay cut off by a crash also counts as replayed. Entries written before
`edges` existed (no "edges", "sha256" in "started") are matched by size and then SHA-256. A
run that failed before any row could be written (its metadata writers were never opened, e.g.
another replay held the journal) is marked "aborted" and does not count. Counts only: nothing
of the packets is kept here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.read.filehash import EDGE, FileHash, Fingerprint, digest_fd
from capture.read.reader import CaptureReader, open_regular

__all__ = ["FileHash", "Fingerprint", "ReplayLedger", "Run", "digest_fd", "edges", "fingerprint"]

LEDGER = "replayed.jsonl"
_READ = 1 << 20


@dataclass(frozen=True)
class Run:
    """One replay recorded as started: `sha256` is known now only for files up to 2 MiB or
    when an earlier replay had the same edges; else it is computed from what the replay reads."""

    id: str
    size: int
    edges: str
    sha256: str | None


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        got = os.pread(fd, min(n, _READ), offset)
        if not got:
            break
        parts.append(got)
        n -= len(got)
        offset += len(got)
    return b"".join(parts)


def edges(fd: int) -> tuple[int, str]:
    """(size, SHA-256 of the first and last MiB) of the open file `fd` (position unchanged).
    Up to 2 MiB the two ranges are the whole file, so the hash is its SHA-256."""
    size = os.fstat(fd).st_size
    h = hashlib.sha256(_pread_all(fd, min(size, EDGE), 0))
    tail = max(EDGE, size - EDGE)
    if size > tail:
        h.update(_pread_all(fd, size - tail, tail))
    return size, h.hexdigest()


def fingerprint(path: Path) -> Fingerprint:
    """Check that `path` is a readable regular file with a pcap/pcapng header (raising
    `CaptureError` naming it otherwise) and return its fingerprint."""
    fh = open_regular(path)
    with fh:
        CaptureReader(path, fh)  # the header check; it closes fh if the header is bad
        return digest_fd(fh.fileno())


class ReplayLedger:
    """The record of replayed files in one data directory's journal directory."""

    def __init__(self, journal_dir: Path) -> None:
        self.path = journal_dir / LEDGER

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with open(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh

    @staticmethod
    def _entries(fh: Any) -> Iterator[dict[str, Any]]:
        fh.seek(0)
        for line in fh:
            with contextlib.suppress(ValueError):  # a line cut off by a crash (or not UTF-8)
                entry = json.loads(line)
                if isinstance(entry, dict):
                    yield entry

    def begin(
        self, fd: int, file: str, at: str, *, again: bool
    ) -> tuple[Run | None, dict[str, Any] | None]:
        """Decide whether the open capture `fd` (named `file`) may be replayed and, if so,
        record it as started: returns (run, None). If it was replayed before (or may have
        been: see the module docstring) and `again` is false, records nothing and returns
        (None, the earlier "started" entry; with "unfinished": true when its SHA-256 was
        never recorded). Check and record happen under one lock."""
        size, edge = edges(fd)
        sha = edge if size <= 2 * EDGE else None
        with self._locked() as fh:
            entries = list(self._entries(fh))
            same = [
                e
                for e in entries
                if e.get("event") == "started"
                and e.get("size") == size
                and e.get("edges", edge) == edge
            ]
            if same and sha is None:
                sha = digest_fd(fd).sha256  # same size and edges: only the full hash can tell
            prior = self._prior(entries, same, sha)
            if prior is not None and not again:
                return None, prior
            run = Run(secrets.token_hex(8), size, edge, sha)
            self._append(
                fh,
                {
                    "event": "started",
                    "run": run.id,
                    "size": size,
                    "edges": edge,
                    "sha256": sha,
                    "file": file,
                    "at": at,
                    "again": again,
                },
            )
        return run, None

    @staticmethod
    def _prior(
        entries: list[dict[str, Any]], same: list[dict[str, Any]], sha: str | None
    ) -> dict[str, Any] | None:
        if not same:
            return None
        done = {
            e.get("run"): e.get("sha256")
            for e in entries
            if e.get("event") == "done" and e.get("run") and e.get("sha256")
        }
        aborted = {e.get("run") for e in entries if e.get("event") == "aborted" and e.get("run")}
        unknown: dict[str, Any] | None = None
        for e in same:
            if e.get("run") in aborted:
                continue
            theirs = e.get("sha256") or done.get(e.get("run"))
            if theirs == sha:
                return e
            if theirs is None and unknown is None:
                unknown = {**e, "unfinished": True}
        return unknown

    def done(self, run: Run, file: str, at: str, sha256: str, counts: dict[str, int]) -> None:
        """Record the end of `run`, with the SHA-256 of what it read."""
        entry = {"event": "done", "run": run.id, "size": run.size, "sha256": sha256}
        with self._locked() as fh:
            self._append(fh, {**entry, "file": file, "at": at, **counts})

    def abort(self, run: Run, file: str, at: str) -> None:
        """Record that `run` ended before any of its rows could be written: it does not count."""
        entry = {"event": "aborted", "run": run.id, "size": run.size, "file": file, "at": at}
        with self._locked() as fh:
            self._append(fh, entry)

    @staticmethod
    def _append(fh: Any, entry: dict[str, Any]) -> None:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":  # a line cut off by a crash: keep the next one whole
                fh.write(b"\n")
        fh.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())

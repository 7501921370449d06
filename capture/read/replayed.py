"""Which capture files were replayed into a data directory, so a second replay of the same
file (which would duplicate its flow and dns rows) is refused unless asked for (`--again`).

The record is `journal/replayed.jsonl` in the data directory: it belongs with the metadata
journals because it says which rows the metadata already holds. One JSON line per event,
mode 0600, appended under an exclusive `flock` (two replays of one file at the same time:
the second is refused):

    {"event": "started", "sha256": HEX, "size": N, "file": PATH, "at": ISO8601, "again": false}
    {"event": "done", "sha256": HEX, "size": N, "file": PATH, "at": ISO8601,
     "packets": N, "flows": N, "dns_rows": N}

A file is identified by its content (SHA-256 and size), not its name: a renamed or copied
capture is still the same capture. "started" is written before the first row, so a replay cut
off by a crash (whose rows may be partly written) also counts as replayed; its record then has
no "done" line. Counts only: nothing of the packets is kept here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.read.reader import CaptureReader, open_regular

LEDGER = "replayed.jsonl"
_READ = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """A capture file's identity: SHA-256 of its bytes and its size."""

    sha256: str
    size: int


def fingerprint(path: Path) -> Fingerprint:
    """Check that `path` is a readable regular file with a pcap/pcapng header (raising
    `CaptureError` naming it otherwise) and return its fingerprint."""
    fh = open_regular(path)
    h = hashlib.sha256()
    size = 0
    with fh:
        CaptureReader(path, fh)  # the header check; it closes fh if the header is bad
        fh.seek(0)
        while chunk := fh.read(_READ):
            h.update(chunk)
            size += len(chunk)
    return Fingerprint(h.hexdigest(), size)


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

    def previous(self, fp: Fingerprint) -> dict[str, Any] | None:
        """The first "started" entry of this file, if it was replayed before."""
        if not self.path.exists():
            return None
        with self._locked() as fh:
            return self._find(fh, fp)

    def _find(self, fh: Any, fp: Fingerprint) -> dict[str, Any] | None:
        for e in self._entries(fh):
            if e.get("event") == "started" and (e.get("sha256"), e.get("size")) == (
                fp.sha256,
                fp.size,
            ):
                return e
        return None

    def start(self, fp: Fingerprint, file: str, at: str, *, again: bool) -> dict[str, Any] | None:
        """Record that `file` is being replayed; returns None. If it was replayed before and
        `again` is false, records nothing and returns the earlier entry (check and record
        under one lock, so two concurrent replays of one file cannot both start)."""
        with self._locked() as fh:
            prior = self._find(fh, fp)
            if prior is not None and not again:
                return prior
            self._append(fh, {"event": "started", **self._id(fp, file, at), "again": again})
        return None

    def done(self, fp: Fingerprint, file: str, at: str, counts: dict[str, int]) -> None:
        with self._locked() as fh:
            self._append(fh, {"event": "done", **self._id(fp, file, at), **counts})

    @staticmethod
    def _id(fp: Fingerprint, file: str, at: str) -> dict[str, Any]:
        return {"sha256": fp.sha256, "size": fp.size, "file": file, "at": at}

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

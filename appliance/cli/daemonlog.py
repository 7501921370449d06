"""Structured logs for the daemons: one JSON object per line on stdout (journald keeps them).

Each line: `ts` (UTC), `level`, `daemon`, `event` (a code word or a short fixed text), and
fields that are counts, code words, key names, ports or pids. Callers never pass content nor a
non-subject's identifier; mitmproxy's own records reach `JsonFormatter` only after
`addons.logfilter` has reduced them to fixed texts.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


def line(daemon: str, event: str, level: str = "info", **fields: Any) -> str:
    record = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "daemon": daemon,
        "event": event,
        **fields,
    }
    return json.dumps(record, sort_keys=False, default=str)


def log(daemon: str, event: str, level: str = "info", *, stream: TextIO | None = None,
        **fields: Any) -> None:  # fmt: skip
    """Write one JSON line (stdout by default) and flush it."""
    out = stream or sys.stdout
    out.write(line(daemon, event, level, **fields) + "\n")
    out.flush()


class JsonFormatter(logging.Formatter):
    """For `logging` handlers: the record's (already filtered) message as a JSON line."""

    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        return line(self.daemon, record.getMessage(), record.levelname.lower(), logger=record.name)

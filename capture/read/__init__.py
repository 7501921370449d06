"""Stage 1, read: capture files and network interfaces -> `capture.batch.RawBatch`es.

In: a pcap or pcapng file (a regular file only: a FIFO, socket or device is refused before
anything could block, `regular`), or a bound AF_PACKET socket (`ring`, TPACKET_V3).
Out: `RawBatch`es of up to `max_packets` frames packed into one uint8 buffer, with per-packet
timestamp (ns), captured and wire length, offset and link type; the reader's record counters
(`truncated_record`, `bad_record`, `bad_timestamp`, ...) in `CaptureReader.summary`, the
kernel's drops in `PacketRing.drops()`. A file that cannot be read raises `CaptureError`
naming the path and what is wrong, never content.

Threads: everything runs on the caller's thread, except `Prefetch`, which runs a producer
(read + decode) on one background thread, a batch ahead in a replay.
Bounds: a file is read in chunks (`reader.DEFAULT_CHUNK`, 16 MiB, the first one 1 MiB, grown
only for one larger record up to `reader.MAX_RECORD`, 64 MiB, beyond which a record is
corruption); `Prefetch` holds at most `depth` batches; a ring block is copied out and handed
back at once.

Modules: `reader` (pcap/pcapng streaming), `walk` (record-header walking in C, else Python),
`interfaces` (pcapng IDBs, timestamp units), `regular`, `prefetch`, `ring`, and `replayed`
(which files a data directory has replayed, so a second replay is refused).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capture.read.prefetch import Prefetch
    from capture.read.reader import CaptureReader, open_capture
    from capture.read.replayed import ReplayLedger, fingerprint
    from capture.read.ring import PacketRing, ring_disabled

# Loaded at first use (PEP 562): the reader needs numpy, and `lbm capture replay` starts the
# ledger's hashing child (`childhash`) before numpy loads, while the other core is idle.
_WHERE = {
    "CaptureReader": "reader",
    "PacketRing": "ring",
    "Prefetch": "prefetch",
    "ReplayLedger": "replayed",
    "fingerprint": "replayed",
    "open_capture": "reader",
    "ring_disabled": "ring",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'capture.read' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"capture.read.{mod}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CaptureReader",
    "PacketRing",
    "Prefetch",
    "ReplayLedger",
    "fingerprint",
    "open_capture",
    "ring_disabled",
]

"""What a capture run did, for `lbm capture replay`/`live` output: counts and problems by
kind, never content."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capture.batch import STATUS


@dataclass
class Summary:
    """What a run did; bad packets and unreadable files by kind, never content."""

    packets: int = 0
    flows: int = 0
    dns_rows: int = 0
    bad_packets: dict[str, int] = field(default_factory=dict)
    decode_counts: dict[str, int] = field(default_factory=dict)  # tunnels, fragments
    files_failed: dict[str, str] = field(default_factory=dict)
    archived_packets: int = 0
    archive_errors: int = 0
    archive_hold_dropped: int = 0  # subjects' packets lost while held (hold memory full)
    flow_counters: dict[str, int] = field(default_factory=dict)
    live_reader: str = ""  # live capture: "tpacket_v3" ring or "socket" reads

    def add_bad(self, counts: dict[str, int]) -> None:
        """Add reader/decoder counters: problems go to `bad_packets`, the rest (tunnels
        decapsulated, fragments attributed) to `decode_counts`."""
        for k, v in counts.items():
            bad = k in STATUS or k.startswith("reader_") or k.endswith("unattributed")
            into = self.bad_packets if bad else self.decode_counts
            into[k] = into.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "flows": self.flows,
            "dns_rows": self.dns_rows,
            "bad_packets": dict(sorted(self.bad_packets.items())),
            "decode_counts": dict(sorted(self.decode_counts.items())),
            "files_failed": self.files_failed,
            "archived_packets": self.archived_packets,
            "archive_errors": self.archive_errors,
            "archive_hold_dropped": self.archive_hold_dropped,
            "flow_counters": self.flow_counters,
            **({"live_reader": self.live_reader} if self.live_reader else {}),
        }

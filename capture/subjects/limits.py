"""How much of subjects' packets the capture path keeps in memory, and for how long.

One value object for the bounds `hold` and `recorder` enforce; `lbm capture` fills it from
the `[capture]` options (`appliance/config/schema_capture.py`), whose defaults are these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from capture.subjects.hold import HOLD_MAX_BYTES, HOLD_MAX_PACKETS, HOLD_TOTAL_BYTES, Hold
from capture.subjects.recorder import (
    RECORD_MAX_AGE_S,
    RECORD_MAX_BYTES,
    TOTAL_MAX_BYTES,
    SubjectRecorder,
)
from store.archive import Archive


@dataclass(frozen=True)
class SubjectLimits:
    """Held packets per flow and in all (until a flow's TLS server name is known), and the
    size, age and total of the pcapng records being gathered."""

    hold_max_packets: int = HOLD_MAX_PACKETS
    hold_max_bytes: int = HOLD_MAX_BYTES
    hold_total_bytes: int = HOLD_TOTAL_BYTES
    record_max_bytes: int = RECORD_MAX_BYTES
    record_max_age_s: float = RECORD_MAX_AGE_S
    record_total_bytes: int = TOTAL_MAX_BYTES

    def new_hold(self) -> Hold:
        return Hold(
            max_packets=self.hold_max_packets,
            max_bytes=self.hold_max_bytes,
            total_bytes=self.hold_total_bytes,
        )

    def new_recorder(
        self, archive: Archive, on_error: Callable[[str, str], None] | None = None
    ) -> SubjectRecorder:
        return SubjectRecorder(
            archive,
            on_error,
            max_bytes=self.record_max_bytes,
            max_age_s=self.record_max_age_s,
            total_bytes=self.record_total_bytes,
        )

"""Stage 5, subjects: subjects' packets -> their authorisations' archives; flows past the
proxy -> `web` rows.

In: each `PacketBatch` with its flow assignment, the policy snapshot (`appliance.policy`),
the flow's internal address and `capture.app`'s TLS server name; ended flows.
Out: covered packets as pcapng records (`recorder`, one record per flow per reference per
segment, through `store.archive.Archive`), the refs and record ids each ended flow's row
carries, and counts (`archived`, `hold_dropped`, `errors`); an archive failure or a hold drop
is reported to `on_archive_error`, which the caller audits as a capture gap.

Decisions: every packet is decided at its own timestamp with the identity lease and the
authorisations that hold then (`gate`, cached per flow while they stay the same; `instants`
converts between the packets' nanoseconds and the policy's microseconds and datetimes); a
subject's flow is held back (`hold`) until its TLS server name is known, so a do-not-decrypt
server never reaches the archive on a guess.

Threads: one `ArchiveGate` and `SubjectRecorder` per capture source, on the pipeline's
thread; `SubjectRecorder.sweep()` is called about once a second.
Bounds (`SubjectLimits`, from `[capture]` options): held packets per flow
(`hold_max_packets`, `hold_max_bytes`; then the flow is decided without a name) and over all
flows (`hold_total_bytes`; past it a packet is dropped, counted and audited); a record is
written at `record_max_bytes` or `record_max_age_s`, and every buffer once all of them
exceed `record_total_bytes`. Held and buffered packets are in memory only.

`bypassed` (imported as `capture.subjects.bypassed`, not through this facade: it loads
pyarrow and only live capture on the inside interface uses it): with `[web]
transparent_scope = "subjects"`, one `web` row (`decision = "bypassed"`) per ended TCP flow
to port 80/443 from the internal networks (metadata only).
"""

from capture.subjects.gate import ArchiveGate
from capture.subjects.hold import Hold
from capture.subjects.limits import SubjectLimits
from capture.subjects.pcapng import PcapngRecord
from capture.subjects.recorder import SubjectRecorder

__all__ = [
    "ArchiveGate",
    "Hold",
    "PcapngRecord",
    "SubjectLimits",
    "SubjectRecorder",
]

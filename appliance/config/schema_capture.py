"""Limits on what the gateway holds of subjects' content: the capture path's in-memory
buffers (`[capture]`) and the archive's segment size (`[archive]`, every channel).

Each becomes a constructor argument where the daemon is built (`appliance/cli/capture_cmd.py`,
`proxy_cmd.py`, `smtp_cmd.py`); the channels never read the config themselves. Defaults are
the values the code had as literals (`capture.subjects.limits.SubjectLimits`,
`store.archive.DEFAULT_MAX_BYTES`); a test keeps them equal.
"""

from __future__ import annotations

from appliance.config.option import Option, _between

MIB = 1 << 20
GIB = 1 << 30

CAPTURE_LIMITS: list[Option] = [
    Option(
        "capture",
        "hold_max_packets",
        int,
        64,
        "packets of one subject's flow held in memory until its TLS server name is known "
        "(the do-not-decrypt check); past it the flow is decided without a name",
        _between(1, 100_000),
    ),
    Option(
        "capture",
        "hold_max_bytes",
        int,
        1 * MIB,
        "bytes of one subject's flow held until its TLS server name is known (as above)",
        _between(1_024, GIB, "bytes"),
    ),
    Option(
        "capture",
        "hold_total_bytes",
        int,
        32 * MIB,
        "bytes held over all subjects' flows; past it a packet is dropped, counted and audited "
        "as a capture gap (never archived on a guess)",
        _between(0, 16 * GIB, "bytes"),
    ),
    Option(
        "capture",
        "record_max_bytes",
        int,
        1 * MIB,
        "a subject's flow is written to the archive as a pcapng record once this many bytes "
        "are gathered",
        _between(4_096, 256 * MIB, "bytes"),
    ),
    Option(
        "capture",
        "record_max_age_s",
        int,
        5,
        "... or once its first packet was gathered this many seconds ago",
        _between(1, 600, "seconds"),
    ),
    Option(
        "capture",
        "record_total_bytes",
        int,
        64 * MIB,
        "bytes gathered over all subjects' flows; past it every record is written out",
        _between(MIB, 16 * GIB, "bytes"),
    ),
    Option(
        "archive",
        "segment_max_bytes",
        int,
        256 * MIB,
        "an archive segment is closed at this size (or 60 s after its first record)",
        _between(MIB, 64 * GIB, "bytes"),
    ),
]

"""The `_tcpstate` C extension: Zeek's per-connection TCP state machine, the application-head
scan (`capture.app.scan`) and the DNS scan, loaded (and built if needed) by `capture.native.build`.

Per-flow TCP state (endpoint states, sequence space, history letters) has to follow the packets
in order, which numpy cannot express; the extension walks the TCP packets of a batch once
(about 10 ns a packet) while every counter that does not depend on order stays an array
operation in `capture.flow.table`. The logic follows Zeek's TCPSessionAdapter / TCP_Endpoint
(`UpdateStateMachine`, `update_history`, `update_last_seq`, `TCP_Endpoint::Size`); events,
timers, reassembly, checksums and window tracking are left out.

There is no pure-Python fallback: without a build and without a C compiler, importing this
module raises `CaptureError` saying so (install runs ``python -m capture.native.build``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from capture.native import build

# Zeek conn_state names in the order tcp_conn_state() returns them.
CONN_STATES = (
    "S0",
    "S1",
    "SF",
    "REJ",
    "S2",
    "S3",
    "RSTO",
    "RSTR",
    "RSTOS0",
    "RSTRH",
    "SH",
    "SHR",
    "OTH",
)


def load() -> ModuleType:
    """The compiled module (with `.ffi` and `.lib`), built if needed (CaptureError if not)."""
    return build.load(build.TCPSTATE)


_mod: Any = load()
ffi: Any = _mod.ffi
lib: Any = _mod.lib


def closed(tcp: Any, cap: int, slots: Any) -> Any:
    """Whether each of `slots` (in the `tcpflow[cap]` array `tcp`) is closed for good (its
    `closed` byte, read through a strided numpy view: no copy of the array)."""
    size = ffi.sizeof("tcpflow")
    raw = np.frombuffer(ffi.buffer(tcp, size * cap), np.uint8)
    col = np.lib.stride_tricks.as_strided(
        raw[ffi.offsetof("tcpflow", "closed") :], shape=(cap,), strides=(size,)
    )
    return col[np.asarray(slots, np.intp)] != 0

"""The C fast path for application heads that fit in one packet (see `_tcpstate_build.py`,
`app_scan`): one call per batch over the candidate packets, instead of a Python parse each;
and the choice of those candidates (`candidates`, one C pass too).
What it cannot settle (heads spanning segments, STARTTLS, DNS, banners) goes to `AppMeta`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from capture.batch import PacketBatch
from capture.flow import tcpstate

KIND_OTHER, KIND_CH, KIND_SH, KIND_HTTP, KIND_PARTIAL = 0, 1, 2, 3, 4

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


def app_scan(buf: npt.NDArray[np.uint8], off: I64, cap: I32) -> tuple[I32, I64, I32, I32]:
    """(kind, a_off, a_len, ver) per packet: for a ClientHello the SNI's offset and length in
    `buf` (length 0: no SNI); for a ServerHello `ver` is the negotiated version; for an HTTP
    head the Host value's offset and length (-1: no Host) and `ver` the method's length."""
    n = off.size
    kind = np.zeros(n, np.int32)
    a_off = np.zeros(n, np.int64)
    a_len = np.zeros(n, np.int32)
    ver = np.zeros(n, np.int32)
    if n:
        o = np.ascontiguousarray(off, np.int64)
        c = np.ascontiguousarray(np.minimum(cap, np.maximum(buf.size - o, 0)), np.int32)
        fb = tcpstate.ffi.from_buffer
        tcpstate.lib.app_scan(
            fb("uint8_t[]", np.ascontiguousarray(buf)),
            n,
            fb("int64_t[]", o),
            fb("int32_t[]", c),
            fb("int32_t[]", kind),
            fb("int64_t[]", a_off),
            fb("int32_t[]", a_len),
            fb("int32_t[]", ver),
        )
    return kind, a_off, a_len, ver


def candidates(
    b: PacketBatch,
    pkt: npt.NDArray[np.int64],
    slot: npt.NDArray[np.int64],
    budget: npt.NDArray[np.int32],
    scratch: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The application feed's candidates among the batch's assigned packets (`pkt` in flow
    `slot`): payload, not a later fragment, budget left. Returns their positions in `pkt`
    and each one's rank among its flow's candidates in this batch (`app_candidates` in C;
    `scratch`: one zeroed int32 per slot, zero again on return)."""
    n = int(pkt.size)
    idx = np.empty(n, np.int64)
    rank = np.empty(n, np.int64)
    if n == 0:
        return idx, rank
    fb = tcpstate.ffi.from_buffer
    k = int(
        tcpstate.lib.app_candidates(
            n,
            fb("int64_t[]", np.ascontiguousarray(pkt, np.int64)),
            fb("int64_t[]", np.ascontiguousarray(slot, np.int64)),
            int(b.payload_cap.size),
            fb("int32_t[]", np.ascontiguousarray(b.payload_cap, np.int32)),
            fb("uint8_t[]", np.ascontiguousarray(b.frag, np.uint8)),
            fb("int32_t[]", budget),
            min(int(budget.size), int(scratch.size)),
            fb("int32_t[]", scratch),
            fb("int64_t[]", idx),
            fb("int64_t[]", rank),
        )
    )
    if k < 0:
        raise IndexError("app_candidates: a packet or slot index is out of range")
    return idx[:k], rank[:k]

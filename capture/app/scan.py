"""The C fast path for application heads that fit in one packet (see `_tcpstate_build.py`,
`app_scan`): one call per batch over the candidate packets, instead of a Python parse each.
What it cannot settle (heads spanning segments, STARTTLS, DNS, banners) goes to `AppMeta`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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

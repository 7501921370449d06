"""VN-Tag (EtherType 0x8926, Cisco FEX / IEEE 802.1Qbh): skip it as Zeek's VNTag analyzer does.

The tag is 6 bytes after the EtherType that announced it: 4 bytes of tag (direction,
pointer, destination and source virtual interface), then the EtherType of what follows
(IP, 802.1Q, ...). Vectorised over the frames of a batch, bounds-checked against each
frame's end; a frame too short for the tag is marked truncated.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from capture.batch import STATUS

ETH_VNTAG = 0x8926
VNTAG_LEN = 6

I64 = npt.NDArray[np.int64]


def skip(
    buf: npt.NDArray[np.uint8], et: I64, off: I64, end: I64, status: npt.NDArray[np.uint8]
) -> tuple[I64, I64]:
    """Frames whose EtherType `et` is VN-Tag: (EtherType after the tag, offset after it).

    Others are returned unchanged; a short frame gets `truncated` status and EtherType -1.
    """
    m = et == ETH_VNTAG
    if not m.any():
        return et, off
    short = m & (off + VNTAG_LEN > end)
    status[short] = STATUS["truncated"]
    m &= ~short
    safe = np.where(m, off + 4, 0)
    nxt = (buf[safe].astype(np.int64) << 8) | buf[safe + 1]
    et = np.where(m, nxt, np.where(short, -1, et))
    return et, np.where(m, off + VNTAG_LEN, off)

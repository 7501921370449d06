"""The middle level of nested tunnels, so flows can chain `tunnel_parents` as Zeek does.

Zeek decapsulates up to `Tunnel::max_depth` levels (default 2) and logs each tunnel that
runs over UDP as a connection whose inner connections name it in `tunnel_parents` (the
innermost encapsulating connection only: `c$tunnel[|c$tunnel|-1]`). A `PacketBatch` keeps
the outermost tunnel connection in its `outer_*` columns; for packets tunnelled twice (VXLAN
inside Geneve, GRE inside VXLAN, ...) the connection between the two tunnels is kept here,
for those packets only (`rows`), so batches without nesting carry nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from capture.batch import PacketBatch

I64 = npt.NDArray[np.int64]


@dataclass
class Middle:
    """Per nested packet (batch index `rows`, ascending): the middle connection's 5-tuple
    and IP length, with the same conventions as the batch's own columns."""

    rows: I64
    proto: npt.NDArray[np.uint8]
    src: npt.NDArray[np.uint8]  # (k, 16)
    dst: npt.NDArray[np.uint8]
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    ip_len: npt.NDArray[np.int32]

    def merged(self, other: Middle) -> Middle:
        """Both sets of rows, in batch order."""
        order = np.argsort(np.concatenate([self.rows, other.rows]), kind="stable")
        return Middle(
            **{
                f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])[order]
                for f in fields(self)
            }
        )

    def select(self, idx: npt.NDArray[np.bool_] | npt.NDArray[np.intp], n: int) -> Middle:
        """The rows kept by `PacketBatch.select(idx)` of an n-packet batch, renumbered."""
        pos = np.full(n, -1, np.int64)
        pos[idx] = np.arange(np.arange(n)[idx].size)
        keep = pos[self.rows] >= 0
        out = {f.name: getattr(self, f.name)[keep] for f in fields(self)}
        out["rows"] = pos[self.rows[keep]]
        return Middle(**out)


def save_middle(out: PacketBatch, tr: npt.NDArray[np.intp]) -> None:
    """Keep the connection the decoder has just decoded for rows `tr` (about to be replaced
    by their inner packet) as their middle level."""
    mid = Middle(
        rows=tr.astype(np.int64),
        proto=out.proto[tr],
        src=out.src[tr],
        dst=out.dst[tr],
        sport=out.sport[tr],
        dport=out.dport[tr],
        ip_len=out.ip_len[tr],
    )
    out.middle = mid if out.middle is None else out.middle.merged(mid)

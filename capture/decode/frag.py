"""Fragment attribution: give every IPv4/IPv6 fragment its flow's ports.

Only the first fragment of a datagram carries the transport header. `FragTable` remembers
(src, dst, id, proto) -> (sport, dport) from first fragments, bounded in size (oldest
evicted first, counted), across batches, so later fragments of the same datagram get the
same 5-tuple. This is not full reassembly: payload is never joined, only attributed.
Within one batch, first fragments are registered before later ones are looked up, so
fragments reordered inside a batch are attributed too. Fragments are rare, so this runs
per fragment in Python.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from capture.batch import FRAG, STATUS, PacketBatch

DEFAULT_MAX_ENTRIES = 65536


class FragTable:
    """Bounded map of datagram key -> (sport, dport) from first fragments."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._table: OrderedDict[tuple[bytes, bytes, int, int], tuple[int, int]] = OrderedDict()
        self.counters: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._table)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def attribute(
        self, out: PacketBatch, rows: npt.NDArray[np.intp], frag_id: npt.NDArray[np.int64]
    ) -> None:
        """Register first fragments among `rows`, then fill ports of the later ones."""
        frag = out.frag[rows]
        firsts = rows[frag == FRAG["first"]]
        first_ids = frag_id[frag == FRAG["first"]]
        for i, fid in zip(firsts.tolist(), first_ids.tolist(), strict=True):
            self._count("fragments_first")
            if out.status[i] != 0:
                continue
            key = (out.src[i].tobytes(), out.dst[i].tobytes(), int(fid), int(out.proto[i]))
            self._table[key] = (int(out.sport[i]), int(out.dport[i]))
            self._table.move_to_end(key)
            if len(self._table) > self.max_entries:
                self._table.popitem(last=False)
                self._count("fragments_evicted")
        later_mask = frag >= FRAG["middle"]
        for i, fid in zip(rows[later_mask].tolist(), frag_id[later_mask].tolist(), strict=True):
            self._count("fragments_later")
            if out.status[i] != 0:
                continue
            key = (out.src[i].tobytes(), out.dst[i].tobytes(), int(fid), int(out.proto[i]))
            ports = self._table.get(key)
            if ports is None:
                out.status[i] = STATUS["fragment_later"]  # counted by status
                continue
            out.sport[i], out.dport[i] = ports

"""`dns` rows waiting for the metadata writer, made into Arrow columns once per block.

A batch gives few `dns` rows (tens), and an Arrow array per column per batch costs more than
its rows; so each batch's rows are kept as arrays and lists (`add`): `AppMeta`'s fields (the
pairs' `PairData`, or `AppMeta`'s row dicts) and the flow's fields, read from the flow table
when the rows were made (its slots are reused later). `columns()` makes the columns of all
of them in a few calls, rows in the order they were added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.app.dnspairs import PairData, pair_columns, row_columns, row_schema
from capture.flow.keys import community_id_array
from capture.flow.rows import addr_array, empty_lists, proto_names, repeat_text

I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class FlowFields:
    """The flow's fields of k `dns` rows (each row's flow, when the row was made)."""

    orig_h: npt.NDArray[np.uint8]  # (k, 16)
    resp_h: npt.NDArray[np.uint8]
    orig_p: npt.NDArray[np.uint16]
    resp_p: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]
    principal: npt.NDArray[np.object_]


class DnsBlocks:
    """Pending `dns` rows: `add(meta, flow)` per batch, `columns()` when they are sent."""

    def __init__(self) -> None:
        self._blocks: list[tuple[PairData | list[dict[str, Any]], FlowFields]] = []
        self.rows = 0

    def add(self, meta: PairData | list[dict[str, Any]], flow: FlowFields) -> None:
        n = meta.size if isinstance(meta, PairData) else len(meta)
        if n:
            self._blocks.append((meta, flow))
            self.rows += n

    def columns(self, interface: str | None) -> dict[str, Any] | None:
        """Every pending row's `dns` columns (`ts` in microseconds, numpy), in the order
        added; None if there are none. The pending rows are cleared."""
        blocks, self._blocks, n = self._blocks, [], self.rows
        self.rows = 0
        if not blocks:
            return None
        pairs = [m for m, _ in blocks if isinstance(m, PairData)]
        dicts = [r for m, _ in blocks if not isinstance(m, PairData) for r in m]
        both = [pair_columns(PairData.concat(pairs))] if pairs else []
        if dicts:
            both.append(row_columns(dicts))
        cols = both[0] if len(both) == 1 else _interleave(both, blocks)
        del cols["slot"]
        cols["ts"] = np.asarray(cols["ts"], np.int64) // 1000
        f = [fl for _, fl in blocks]
        oh, rh = np.concatenate([x.orig_h for x in f]), np.concatenate([x.resp_h for x in f])
        op, rp = np.concatenate([x.orig_p for x in f]), np.concatenate([x.resp_p for x in f])
        proto = np.concatenate([x.proto for x in f])
        import pyarrow as pa  # lazily: the first packet does not wait for it

        cols["client_ip"], cols["server_ip"] = addr_array(oh), addr_array(rh)
        cols["client_port"], cols["server_port"] = op, rp
        cols["proto"] = proto_names(proto, "udp")
        cols["community_id"] = community_id_array(oh, rh, proto, op, rp)
        cols["principal"] = pa.array(np.concatenate([x.principal for x in f]), pa.string())
        cols["interface"] = repeat_text(interface, n)
        cols["refs"] = cols["record_ids"] = empty_lists(n)
        return cols


def _interleave(
    both: list[dict[str, Any]], blocks: list[tuple[PairData | list[dict[str, Any]], FlowFields]]
) -> dict[str, Any]:
    """The pairs' columns and the row dicts' columns merged back into the blocks' order: a
    slice of either per block, joined once per column."""
    import pyarrow as pa

    schema = row_schema()
    p, d = (
        pa.RecordBatch.from_arrays([pa.array(c[f.name], f.type) for f in schema], schema=schema)
        for c in both
    )
    p_at = d_at = 0
    parts = []
    for meta, _ in blocks:
        if isinstance(meta, PairData):
            parts.append(p.slice(p_at, meta.size))
            p_at += meta.size
        else:
            parts.append(d.slice(d_at, len(meta)))
            d_at += len(meta)
    joined = pa.Table.from_batches(parts, schema=schema).combine_chunks()
    out = {f.name: joined.column(i).chunk(0) for i, f in enumerate(schema)}
    out["ts"], out["slot"] = out["ts"].to_numpy(), out["slot"].to_numpy()
    return out

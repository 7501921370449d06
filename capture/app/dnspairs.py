"""`dns` rows of flows whose first two datagrams are a query and its answer, as columns.

Most DNS flows are one query and one answer. `AppFeed` finds those pairs in a batch with array
code; what their rows need is taken from the batch DNS scan's arrays (`DnsScan`) as arrays
(`PairData`), and the rows are made one column at a time for many batches at once
(`pair_columns`): no `DnsView`, no row dict, no parser state. They are exactly the rows
`AppMeta.dns_datagram` would make from the two messages (a test compares both paths), in the
order the pairs are found (by slot).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.app.dnsparse import QTYPES
from capture.app.dnsscan import (
    _DH_FIRST,
    _DH_ID,
    _DH_NANS,
    _DH_OP,
    _DH_QCLASS,
    _DH_QFROM,
    _DH_QTYPE,
    _DH_STATUS,
    QMAX,
    DnsScan,
)
from capture.app.meta import OPCODES, QCLASSES, RCODES
from capture.flow.rows import fixed_text
from capture.flow.uids import UidLookup

I64 = npt.NDArray[np.int64]


def pairs_ok(sc: DnsScan, q: I64, r: I64) -> tuple[npt.NDArray[np.bool_], list[str | None]]:
    """Which of the candidate pairs (messages q[i], r[i] of the scan) are a query and its
    answer: both read, q a query and r a response, the same id and the same name. Returns
    that mask and the names of the pairs that hold."""
    h = sc.hdr
    ok = (h[q, _DH_STATUS] == 0) & (h[r, _DH_STATUS] == 0)
    ok &= ((h[q, _DH_OP] >> 15) & 1 == 0) & ((h[r, _DH_OP] >> 15) & 1 == 1)
    ok &= h[q, _DH_ID] == h[r, _DH_ID]
    names: list[str | None] = []
    j = np.flatnonzero(ok)
    if j.size == 0:
        return ok, names
    # `DnsScan.name` of both messages compared, without a numpy scalar per name: the bytes
    # first (equal bytes, equal texts; different ASCII bytes, different texts), the texts
    # only where a byte is outside ASCII
    has, ln, buf = (h[:, _DH_QFROM] != 0).tolist(), sc.qlen.tolist(), sc.qname
    for i, a, c in zip(j.tolist(), q[j].tolist(), r[j].tolist(), strict=True):
        if has[a] != has[c]:
            ok[i] = False
        elif not has[a]:
            names.append(None)
        else:
            ba = buf[a * QMAX : a * QMAX + ln[a]]
            bb = buf[c * QMAX : c * QMAX + ln[c]]
            na = ba.decode("ascii", "replace")
            if ba == bb or (
                not (ba.isascii() and bb.isascii()) and na == bb.decode("ascii", "replace")
            ):
                names.append(na)
            else:
                ok[i] = False
    return ok, names


@dataclass(slots=True)
class PairData:
    """What the rows of k query/answer pairs need, taken from a batch's `DnsScan` (which the
    next batch replaces): the header fields of both messages, the names, the answers' texts
    and TTLs, the times (ns), the flow slots and uids. `pair_columns` makes the columns,
    once for many batches' pairs (`concat`)."""

    hq: npt.NDArray[np.int32]  # (k, 8) header fields of the queries (`DnsScan.hdr` rows)
    hr: npt.NDArray[np.int32]  # (k, 8) of the answers
    names: list[str | None]
    texts: list[str]  # every answer's text, answer after answer
    ttls: npt.NDArray[np.float64]  # every answer's TTL
    ts_q: I64
    ts_r: I64
    slots: I64
    uids: Any  # `S17` array (a `UidSlots`'), or a list of str

    @property
    def size(self) -> int:
        return int(self.slots.size)

    @staticmethod
    def concat(parts: list[PairData]) -> PairData:
        if len(parts) == 1:
            return parts[0]
        uids: Any = [p.uids for p in parts]
        if all(isinstance(u, np.ndarray) for u in uids):
            uids = np.concatenate(uids)
        else:
            uids = [
                x
                for u in uids
                for x in (u.astype("U17").tolist() if isinstance(u, np.ndarray) else u)
            ]
        return PairData(
            np.concatenate([p.hq for p in parts]),
            np.concatenate([p.hr for p in parts]),
            [n for p in parts for n in p.names],
            [t for p in parts for t in p.texts],
            np.concatenate([p.ttls for p in parts]),
            np.concatenate([p.ts_q for p in parts]),
            np.concatenate([p.ts_r for p in parts]),
            np.concatenate([p.slots for p in parts]),
            uids,
        )


def _strs(raw: npt.NDArray[Any]) -> list[str]:
    out: list[str] = raw.astype(f"U{raw.dtype.itemsize}").tolist()
    return out


def pair_data(
    sc: DnsScan,
    q: I64,
    r: I64,
    names: list[str | None],
    ts_q: I64,
    ts_r: I64,
    slots: I64,
    uids: UidLookup,
) -> PairData:
    """The `PairData` of the pairs (q[i], r[i]) of `sc` in flow `slots[i]`, seen at ts_q/ts_r."""
    hr = sc.hdr[r]
    nans = hr[:, _DH_NANS].astype(np.int64)
    first = hr[:, _DH_FIRST].astype(np.int64)
    ends = np.cumsum(nans)
    ans = np.repeat(first - (ends - nans), nans) + np.arange(int(ends[-1]) if ends.size else 0)
    texts = [
        sc.text[o : o + ln].decode("ascii", "replace") if ln >= 0 else QTYPES.get(t, f"type{t}")
        for t, o, ln in zip(
            sc.a_type[ans].tolist(), sc.a_off[ans].tolist(), sc.a_len[ans].tolist(), strict=True
        )
    ]
    raw = getattr(uids, "raw", None)  # a `UidSlots`: no string per uid
    uid = raw(slots) if raw is not None else [uids[s] for s in slots.tolist()]
    return PairData(
        sc.hdr[q], hr, names, texts, sc.a_ttl[ans].astype(np.float64), ts_q.astype(np.int64),
        ts_r.astype(np.int64), slots.astype(np.int64), uid,
    )  # fmt: skip


def pair_columns(pd: PairData) -> dict[str, Any]:
    """The `dns` columns of the pairs: `AppMeta`'s row fields (and `slot`), Arrow arrays of
    the stream's types (`ts` and `slot` numpy)."""
    import pyarrow as pa  # lazily, like every pyarrow use on the capture path

    hq, hr = pd.hq, pd.hr
    opq, opr = hq[:, _DH_OP], hr[:, _DH_OP]
    qfrom, qtype, qclass = hq[:, _DH_QFROM], hq[:, _DH_QTYPE], hq[:, _DH_QCLASS]
    opcode = (opq >> 11) & 15
    rcode = opr & 15
    nans = hr[:, _DH_NANS]
    offsets = np.zeros(pd.size + 1, np.int32)
    np.cumsum(nans, out=offsets[1:])
    pa_off = pa.array(offsets, pa.int32())
    qf = qfrom.tolist()
    uid = fixed_text(pd.uids) if isinstance(pd.uids, np.ndarray) else pa.array(pd.uids, pa.string())
    return {
        "ts": pd.ts_q,
        "uid": uid,
        "slot": pd.slots,
        "trans_id": pa.array(hq[:, _DH_ID].astype(np.uint16), pa.uint16()),
        "rtt": pa.array((pd.ts_r - pd.ts_q) / 1e9, pa.float64(), mask=pd.ts_r == pd.ts_q),
        "qname": pa.array(pd.names, pa.string()),
        "qclass": pa.array(qclass.astype(np.uint16), pa.uint16(), mask=qfrom != 1),
        "qclass_name": pa.array(
            [QCLASSES.get(c) if f == 1 else None for c, f in zip(qclass.tolist(), qf, strict=True)],
            pa.string(),
        ),
        "qtype": pa.array(qtype.astype(np.uint16), pa.uint16(), mask=qfrom == 0),
        "qtype_name": pa.array(
            [QTYPES.get(t) if f else None for t, f in zip(qtype.tolist(), qf, strict=True)],
            pa.string(),
        ),
        "rd": pa.array((opq >> 8) & 1 == 1, pa.bool_()),
        "z": pa.array(((opq >> 4) & 7).astype(np.uint8), pa.uint8()),
        "opcode": pa.array(opcode.astype(np.uint8), pa.uint8()),
        "opcode_name": pa.array([OPCODES.get(o) for o in opcode.tolist()], pa.string()),
        "answers": pa.ListArray.from_arrays(pa_off, pa.array(pd.texts, pa.string())),
        "ttls": pa.ListArray.from_arrays(pa_off, pa.array(pd.ttls, pa.float64())),
        "rcode": pa.array(rcode.astype(np.uint16), pa.uint16()),
        "rcode_name": pa.array([RCODES.get(c, str(c)) for c in rcode.tolist()], pa.string()),
        "aa": pa.array((opr >> 10) & 1 == 1, pa.bool_()),
        "tc": pa.array((opr >> 9) & 1 == 1, pa.bool_()),
        "ra": pa.array((opr >> 7) & 1 == 1, pa.bool_()),
        "rejected": pa.array((rcode != 0) & (nans == 0), pa.bool_()),
    }


@functools.cache
def row_schema() -> Any:
    """The Arrow types of `AppMeta`'s `dns` row fields (those `pair_columns` makes)."""
    import pyarrow as pa

    u16, s, b, strs = pa.uint16(), pa.string(), pa.bool_(), pa.list_(pa.string())
    return pa.schema(
        [("ts", pa.int64()), ("uid", s), ("slot", pa.int64()), ("trans_id", u16),
         ("rtt", pa.float64()), ("qname", s), ("qclass", u16), ("qclass_name", s),
         ("qtype", u16), ("qtype_name", s), ("rd", b), ("z", pa.uint8()),
         ("opcode", pa.uint8()), ("opcode_name", s), ("answers", strs),
         ("ttls", pa.list_(pa.float64())), ("rcode", u16), ("rcode_name", s), ("aa", b),
         ("tc", b), ("ra", b), ("rejected", b)]
    )  # fmt: skip


def row_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`AppMeta`'s `dns` row dicts as the columns `pair_columns` makes: one conversion for
    all of them (`ts` and `slot` as numpy)."""
    batch = row_schema()
    import pyarrow as pa

    rb = pa.RecordBatch.from_pylist(rows, schema=batch)
    cols = dict(zip(rb.schema.names, rb.columns, strict=True))
    cols["ts"] = cols["ts"].to_numpy()
    cols["slot"] = cols["slot"].to_numpy()
    return cols

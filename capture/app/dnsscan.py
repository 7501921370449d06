"""DNS messages of a whole batch read in one C call (`dns_scan` in `_dnsscan.c`).

`scan(buf, off, cap)` returns, per message, a `DnsView` (what `capture.app.meta` needs for a
`dns` row: id, flags, the query name/type/class, the answers' texts and TTLs) or None where
the C scan gave up (malformed or unusual messages); those are parsed by `capture.app.dnsparse`,
whose `view()` gives the same `DnsView`, so both paths produce identical rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from capture.app.dnsparse import QTYPES, DnsMessage, Question
from capture.flow import tcpstate

QMAX = 256  # DNS_QMAX in _dnsscan.c
MAX_ANS = 16  # DNS_MAX_ANS
TEXT_PER_ANS = 64
_H = 8  # int32 header fields per message
_DH_STATUS, _DH_ID, _DH_OP, _DH_QFROM, _DH_QTYPE, _DH_QCLASS, _DH_NANS, _DH_FIRST = range(_H)


@dataclass(slots=True)
class DnsView:
    """One DNS message as the `dns` stream uses it."""

    id: int
    op: int  # the 16-bit flags word
    qname: str | None  # first question's name, else the first answer's (mDNS), else None
    qtype: int | None
    qclass: int | None  # None when the name came from an answer
    answers: list[str]
    ttls: list[float]

    @property
    def qr(self) -> int:
        return (self.op >> 15) & 1


def view(m: DnsMessage) -> DnsView:
    """The `DnsView` of a message parsed by `capture.app.dnsparse`."""
    q = m.qd[0] if m.qd else (m.an[0] if m.an else None)
    return DnsView(
        m.id,
        m.op,
        q.name if q is not None else None,
        q.type if q is not None else None,
        q.cls if isinstance(q, Question) else None,
        [rr.text for rr in m.an],
        [float(rr.ttl) for rr in m.an],
    )


def scan(
    buf: npt.NDArray[np.uint8], off: npt.NDArray[np.int64], cap: npt.NDArray[np.int32]
) -> list[DnsView | None]:
    """Views of the messages at buf[off[i] : off[i] + cap[i]] (None: use the Python parser)."""
    n = int(off.size)
    if n == 0:
        return []
    o = np.ascontiguousarray(off, np.int64)
    c = np.ascontiguousarray(np.clip(cap, 0, np.maximum(buf.size - o, 0)), np.int32)
    hdr = np.zeros(n * _H, np.int32)
    qname = np.zeros(n * QMAX, np.uint8)
    qlen = np.zeros(n, np.int32)
    max_ans = n * 4 + MAX_ANS
    a_type = np.zeros(max_ans, np.int32)
    a_ttl = np.zeros(max_ans, np.uint32)
    a_off = np.zeros(max_ans, np.int32)
    a_len = np.zeros(max_ans, np.int32)
    text = np.zeros(max_ans * TEXT_PER_ANS, np.uint8)
    fb = tcpstate.ffi.from_buffer
    tcpstate.lib.dns_scan(
        fb("uint8_t[]", np.ascontiguousarray(buf)),
        n,
        fb("int64_t[]", o),
        fb("int32_t[]", c),
        fb("int32_t[]", hdr),
        fb("uint8_t[]", qname),
        fb("int32_t[]", qlen),
        max_ans,
        fb("int32_t[]", a_type),
        fb("uint32_t[]", a_ttl),
        fb("int32_t[]", a_off),
        fb("int32_t[]", a_len),
        fb("uint8_t[]", text),
        text.size,
    )
    hv = hdr.reshape(n, _H)
    h = hv.tolist()
    qb = qname.tobytes()
    ql = qlen.tolist()
    tb = text.tobytes()
    ok = hv[:, _DH_STATUS] == 0
    used = int((hv[ok, _DH_FIRST] + hv[ok, _DH_NANS]).max()) if ok.any() else 0
    ttls = a_ttl[:used].astype(np.float64).tolist()  # floats once: a slice per message
    # every answer's text in one pass (a type name where the C scan gave no text)
    texts = [
        tb[o : o + ln].decode("ascii", "replace") if ln >= 0 else QTYPES.get(t, f"type{t}")
        for t, o, ln in zip(
            a_type[:used].tolist(), a_off[:used].tolist(), a_len[:used].tolist(), strict=True
        )
    ]
    out: list[DnsView | None] = []
    for i, (st, ident, op, qfrom, qtype, qclass, nans, first) in enumerate(h):
        if st:
            out.append(None)
            continue
        name = None
        if qfrom:
            s = i * QMAX
            name = qb[s : s + ql[i]].decode("ascii", "replace")
        out.append(
            DnsView(
                ident,
                op,
                name,
                qtype if qfrom else None,
                qclass if qfrom == 1 else None,
                texts[first : first + nans],
                ttls[first : first + nans],
            )
        )
    return out

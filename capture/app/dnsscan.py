"""DNS messages of a whole batch read in one C call (`dns_scan` in `_dnsscan.c`).

`scan_raw(buf, off, cap)` gives the scan's arrays (`DnsScan`: the batch DNS pairs read them
without an object per message), and its `view(i)` or `scan(buf, off, cap)`, per message, a
`DnsView` (what `capture.app.meta` needs for a
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


@dataclass(slots=True)
class DnsScan:
    """What `dns_scan` read from n messages, as arrays: `hdr` (n, 8) header fields (status,
    id, flags, where the name came from, qtype, qclass, answer count, first answer), the
    names, and the answers' types, TTLs and texts. `view(i)` makes message i's `DnsView`."""

    hdr: npt.NDArray[np.int32]
    qname: bytes
    qlen: npt.NDArray[np.int32]
    a_type: npt.NDArray[np.int32]
    a_ttl: npt.NDArray[np.uint32]
    a_off: npt.NDArray[np.int32]
    a_len: npt.NDArray[np.int32]
    text: bytes

    def name(self, i: int) -> str | None:
        """Message i's query name (None when neither a question nor an answer named one)."""
        if not self.hdr[i, _DH_QFROM]:
            return None
        s = i * QMAX
        return self.qname[s : s + int(self.qlen[i])].decode("ascii", "replace")

    def answers(self, first: int, count: int) -> list[str]:
        """Texts of answers [first, first + count) (a type name where the scan gave none)."""
        tb = self.text
        return [
            tb[o : o + ln].decode("ascii", "replace") if ln >= 0 else QTYPES.get(t, f"type{t}")
            for t, o, ln in zip(
                self.a_type[first : first + count].tolist(),
                self.a_off[first : first + count].tolist(),
                self.a_len[first : first + count].tolist(),
                strict=True,
            )
        ]

    def view(self, i: int) -> DnsView | None:
        """Message i's `DnsView`, or None where the C scan gave up (use the Python parser)."""
        st, ident, op, qfrom, qtype, qclass, nans, first = self.hdr[i].tolist()
        if st:
            return None
        return DnsView(
            ident,
            op,
            self.name(i),
            qtype if qfrom else None,
            qclass if qfrom == 1 else None,
            self.answers(first, nans),
            self.a_ttl[first : first + nans].astype(np.float64).tolist(),
        )


def scan(
    buf: npt.NDArray[np.uint8], off: npt.NDArray[np.int64], cap: npt.NDArray[np.int32]
) -> list[DnsView | None]:
    """Views of the messages at buf[off[i] : off[i] + cap[i]] (None: use the Python parser)."""
    s = scan_raw(buf, off, cap)
    return [s.view(i) for i in range(int(off.size))]


def scan_raw(
    buf: npt.NDArray[np.uint8], off: npt.NDArray[np.int64], cap: npt.NDArray[np.int32]
) -> DnsScan:
    """The messages at buf[off[i] : off[i] + cap[i]], read in one C call (`DnsScan`)."""
    n = int(off.size)
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
    if n:
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
    return DnsScan(
        hdr.reshape(n, _H), qname.tobytes(), qlen, a_type, a_ttl, a_off, a_len, text.tobytes()
    )

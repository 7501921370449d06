"""A small, bounded DNS message parser for the `dns` stream (header, questions, answers).

Written for the capture path's budget (a few microseconds a message, where a general parser
such as dpkt's takes around a hundred) and for robustness: every read is bounds-checked,
compression pointers are followed at most 32 times, and a record type we do not render is
kept as its type name. Answers are rendered as Zeek's dns.log does for addresses and names;
TXT records give only their string count (no text: data minimisation). The tests check it
against dpkt on the corpus.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    32: "NB",
    33: "SRV",
    35: "NAPTR",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    249: "TKEY",
    250: "TSIG",
    252: "AXFR",
    255: "*",
    257: "CAA",
}
MAX_RECORDS = 64
_NAME_TYPES = {2, 5, 12}  # NS, CNAME, PTR: rdata is a name


class DnsError(ValueError):
    """Not a readable DNS message."""


@dataclass
class Question:
    name: str
    type: int
    cls: int


@dataclass
class Answer:
    name: str
    type: int
    ttl: int
    text: str


@dataclass
class DnsMessage:
    id: int
    op: int  # the 16-bit flags word
    qd: list[Question] = field(default_factory=list)
    an: list[Answer] = field(default_factory=list)

    @property
    def qr(self) -> int:
        return (self.op >> 15) & 1

    @property
    def opcode(self) -> int:
        return (self.op >> 11) & 15

    @property
    def aa(self) -> int:
        return (self.op >> 10) & 1

    @property
    def tc(self) -> int:
        return (self.op >> 9) & 1

    @property
    def rd(self) -> int:
        return (self.op >> 8) & 1

    @property
    def ra(self) -> int:
        return (self.op >> 7) & 1

    @property
    def z(self) -> int:
        return (self.op >> 4) & 7

    @property
    def rcode(self) -> int:
        return self.op & 15


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """(name, position after it) at `pos`, following compression pointers."""
    labels: list[str] = []
    end = -1
    jumps = 0
    n_msg = len(msg)
    while True:
        if pos >= n_msg:
            raise DnsError("name runs past the message")
        n = msg[pos]
        if n >= 0xC0:
            if pos + 1 >= n_msg or jumps >= 32:
                raise DnsError("bad compression pointer")
            if end < 0:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            continue
        if n >= 0x40:
            raise DnsError("unknown label type")
        if n == 0:
            return ".".join(labels), (end if end >= 0 else pos + 1)
        if pos + 1 + n > n_msg:
            raise DnsError("label runs past the message")
        labels.append(msg[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def _rdata_text(msg: bytes, rtype: int, start: int, rdlen: int) -> str:
    rd = msg[start : start + rdlen]
    if rtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, rd)
    if rtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, rd)
    if rtype in _NAME_TYPES:
        return read_name(msg, start)[0]
    if rtype == 15 and rdlen > 2:
        return read_name(msg, start + 2)[0]
    if rtype == 33 and rdlen > 6:
        return read_name(msg, start + 6)[0]
    if rtype == 16:
        count, pos = 0, 0
        while pos < rdlen:
            pos += 1 + rd[pos]
            count += 1
        return f"TXT {count} strings"
    return QTYPES.get(rtype, f"type{rtype}")


def parse_dns(msg: bytes) -> DnsMessage:
    """Header, questions and answers of `msg`; answers that cannot be read are dropped (the
    header and questions must be readable, else DnsError)."""
    if len(msg) < 12:
        raise DnsError("shorter than a DNS header")
    ident, op, qdcount, ancount = struct.unpack_from("!HHHH", msg, 0)
    m = DnsMessage(ident, op)
    pos = 12
    for _ in range(min(qdcount, MAX_RECORDS)):
        name, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise DnsError("question runs past the message")
        qtype, qcls = struct.unpack_from("!HH", msg, pos)
        pos += 4
        m.qd.append(Question(name, qtype, qcls))
    try:
        for _ in range(min(ancount, MAX_RECORDS)):
            name, pos = read_name(msg, pos)
            if pos + 10 > len(msg):
                break
            rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
            pos += 10
            if pos + rdlen > len(msg):
                break
            m.an.append(Answer(name, rtype, ttl, _rdata_text(msg, rtype, pos, rdlen)))
            pos += rdlen
    except (DnsError, IndexError, ValueError):
        pass  # keep the answers read so far
    return m


def netbios_name(name: str) -> str:
    """Decode a NetBIOS first-level encoded name (32 letters A-P) as Zeek does."""
    label = name.split(".", 1)[0]
    u = label.upper()
    if len(u) != 32 or not all("A" <= c <= "P" for c in u):
        return name
    raw = bytes(((ord(u[i]) - 65) << 4) | (ord(u[i + 1]) - 65) for i in range(0, 32, 2))
    return raw[:15].decode("ascii", "replace").rstrip(" \x00")

"""Application metadata from the first packets of a flow: DNS, TLS server name and version,
HTTP host and method, and a service guess.

Only the first packets of each flow reach this module (the pipeline gives every flow a packet
budget; `FlowMeta.wanted()` ends it early once the answer is known), so its cost does not grow
with flow size. Payload is kept only while a message is being parsed: at most `BUF_LIMIT`
bytes per direction of a TCP flow (a ClientHello spanning several segments), dropped as soon
as the parse is done and never written anywhere. Never extracted: URL paths, query strings,
header values other than Host, TXT record text, TLS certificates.

DNS (UDP and TCP, also mDNS/LLMNR/NetBIOS-NS ports) is parsed by `capture.app.dnsparse`; each
query becomes one `dns` row, completed by its response (matched on transaction id) or
emitted alone when the flow ends. TLS and HTTP heads are parsed by hand: a few bounded field
reads, sturdier on partial and odd messages than full parsers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from capture.app.dnsparse import QTYPES, DnsError, netbios_name, parse_dns
from capture.app.dnsscan import DnsView
from capture.app.dnsscan import view as dns_view
from capture.app.heads import (
    HTTP_METHODS,
    http_host,
    parse_client_hello,
    parse_server_hello,
)

BUF_LIMIT = 16384  # bytes per direction buffered for TLS/HTTP heads
DNS_PORTS = frozenset({53, 137, 5353, 5355})
DNS_MAX_MESSAGES = 64  # per flow
# First words of plaintext protocols that can upgrade to TLS (STARTTLS, STLS, AUTH TLS).
PLAINTEXT_CLIENT = {
    b"EHLO": "smtp",
    b"HELO": "smtp",
    b"CAPA": "pop3",
    b"STLS": "pop3",
    b"USER": "ftp",
    b"AUTH": "ftp",
    b"STARTTLS": "smtp",
}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
OPCODES = {0: "query", 1: "iquery", 2: "status", 4: "notify", 5: "update"}
QCLASSES = {1: "C_INTERNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE", 255: "C_ANY"}


@dataclass(slots=True)
class _Dir:
    buf: bytearray = field(default_factory=bytearray)
    next_seq: int | None = None
    dead: bool = False  # gap or limit: no more parsing this direction


@dataclass(slots=True)
class FlowMeta:
    """Parser state of one flow."""

    uid: str
    dns: bool  # a DNS port: every message is parsed (up to DNS_MAX_MESSAGES)
    slot: int  # the flow's slot: dns rows get their join keys from the flow table
    netbios: bool = False  # NetBIOS name service: names are first-level encoded
    service: set[str] = field(default_factory=set)
    server_name: str | None = None
    tls_version: str | None = None
    http_host: str | None = None
    http_method: str | None = None
    dirs: tuple[_Dir, _Dir] = field(default_factory=lambda: (_Dir(), _Dir()))
    dns_pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    dns_messages: int = 0
    head_done: list[bool] = field(default_factory=lambda: [False, False])
    starttls: bool = False  # plaintext protocol that may upgrade to TLS

    @property
    def is_dns(self) -> bool:
        return self.dns

    def wanted(self) -> bool:
        if self.is_dns:
            return self.dns_messages < DNS_MAX_MESSAGES
        if self.head_done[0] and "ssl" not in self.service and not self.starttls:
            return False  # the client head said all we keep (HTTP host, nothing)
        return not all(self.head_done)


class AppMeta:
    """Per-flow application parsers; `dns_rows` collects finished `dns` rows."""

    def __init__(self) -> None:
        self.flows: dict[str, FlowMeta] = {}
        self.dns_rows: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}

    def _err(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def packet(
        self,
        uid: str,
        dns: int,
        slot: int,
        is_orig: bool,
        ts_ns: int,
        payload: bytes,
        seq: int | None,
    ) -> bool:
        """Feed one packet's captured payload (`seq` for TCP, None for UDP); returns whether
        more packets of this flow are wanted."""
        fm = self.flows.get(uid)
        if fm is None:
            fm = self.flows[uid] = FlowMeta(uid, dns > 0, slot, dns == 2)
        if fm.is_dns:
            self._dns_packet(fm, is_orig, ts_ns, payload, seq)
            return fm.wanted()
        side = 0 if is_orig else 1
        d = fm.dirs[side]
        if d.dead or fm.head_done[side]:
            return fm.wanted()
        if fm.starttls:
            # plaintext protocol: only a TLS handshake record starting a segment matters
            if not payload.startswith(b"\x16\x03") and not d.buf:
                return fm.wanted()
            if not d.buf:
                d.next_seq = None
        if not self._append(d, payload, seq):
            fm.head_done[side] = True
            return fm.wanted()
        data = bytes(d.buf)
        done = self._client_head(fm, data) if is_orig else self._server_head(fm, data)
        if fm.starttls and not data.startswith(b"\x16"):
            d.buf = bytearray()  # plaintext command or reply: nothing kept
            d.next_seq = None
        elif done or len(d.buf) >= BUF_LIMIT:
            fm.head_done[side] = True
            d.buf = bytearray()  # drop payload as soon as it is no longer needed
        return fm.wanted()

    @staticmethod
    def _append(d: _Dir, payload: bytes, seq: int | None) -> bool:
        """In-order TCP payload (retransmitted bytes skipped); False on a gap."""
        if seq is None:  # UDP: one datagram is one message
            d.buf = bytearray(payload[:BUF_LIMIT])
            return True
        if d.next_seq is not None:
            delta = (seq - d.next_seq) & 0xFFFFFFFF
            if delta >= 0x80000000:  # starts before what we have: skip the overlap
                skip = (d.next_seq - seq) & 0xFFFFFFFF
                payload = payload[skip:]
                seq = d.next_seq
            elif delta:
                d.dead = True
                d.buf = bytearray()
                return False
        if payload:
            d.buf += payload[: BUF_LIMIT - len(d.buf)]
            d.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        return True

    # ---- client / server heads -----------------------------------------------------------
    def _client_head(self, fm: FlowMeta, data: bytes) -> bool:
        """True when the client's head is understood (or clearly not parseable)."""
        if not data:
            return False
        if data[0] == 0x16:
            res = parse_client_hello(data)
            if res is None:
                return False  # need more segments
            fm.service.add("ssl")
            if res:
                fm.server_name = res
            return True
        if data[0] == 0x80 or data[0] < 0x09:
            return True  # SSLv2 or binary: nothing for us
        sp = data.find(b" ")
        if sp < 0 and any(m.startswith(data) for m in HTTP_METHODS):
            return False  # a request line arriving in pieces
        if 0 < sp <= 12 and data[:sp] in HTTP_METHODS:
            end = data.find(b"\r\n\r\n")
            if end < 0 and len(data) < BUF_LIMIT:
                return False
            fm.service.add("http")
            fm.http_method = data[:sp].decode("ascii")
            fm.http_host = http_host(data[: end if end >= 0 else len(data)])
            return True
        word = data.split(None, 1)[0].upper() if data.strip() else b""
        svc = PLAINTEXT_CLIENT.get(word)
        if svc is not None:
            fm.service.add(svc)
            fm.starttls = True
            return False
        if data.startswith(b"SSH-"):
            fm.service.add("ssh")
        return True

    def _server_head(self, fm: FlowMeta, data: bytes) -> bool:
        if not data:
            return False
        if data[0] == 0x16:
            res = parse_server_hello(data)
            if res is None:
                return False
            fm.service.add("ssl")
            if res:
                fm.tls_version = res
            return True
        if data.startswith(b"SSH-"):
            fm.service.add("ssh")
            return True
        if data[:4] in (b"220 ", b"220-", b"+OK ", b"* OK") or fm.starttls:
            fm.starttls = True  # banner of SMTP/FTP/POP3/IMAP: TLS may follow STARTTLS
            return False
        return True

    # ---- DNS -----------------------------------------------------------------------------
    def _dns_packet(
        self, fm: FlowMeta, is_orig: bool, ts_ns: int, payload: bytes, seq: int | None
    ) -> None:
        if seq is None:
            self._dns_message(fm, ts_ns, payload)
            return
        d = fm.dirs[0 if is_orig else 1]
        if d.dead or not self._append(d, payload, seq):
            return
        while len(d.buf) >= 2:
            n = struct.unpack("!H", d.buf[:2])[0]
            if len(d.buf) < 2 + n:
                if len(d.buf) >= BUF_LIMIT:
                    d.dead = True
                    d.buf = bytearray()
                break
            msg = bytes(d.buf[2 : 2 + n])
            del d.buf[: 2 + n]
            self._dns_message(fm, ts_ns, msg)

    def dns_datagram(
        self, uid: str, dns: int, slot: int, ts_ns: int, payload: bytes, v: DnsView | None
    ) -> bool:
        """One UDP datagram of a DNS-port flow, already read by `capture.app.dnsscan` (`v`), or
        None to parse `payload` here; returns whether more packets are wanted."""
        fm = self.flows.get(uid)
        if fm is None:
            fm = self.flows[uid] = FlowMeta(uid, dns > 0, slot, dns == 2)
        if not fm.dns:  # cannot happen for a DNS-port flow; keep the general path exact
            return self.packet(uid, dns, slot, True, ts_ns, payload, None)
        self._dns_message(fm, ts_ns, payload, v)
        return fm.dns_messages < DNS_MAX_MESSAGES

    def _dns_message(self, fm: FlowMeta, ts_ns: int, msg: bytes, v: DnsView | None = None) -> None:
        if fm.dns_messages >= DNS_MAX_MESSAGES:
            return
        fm.dns_messages += 1
        if v is None:
            try:
                v = dns_view(parse_dns(msg))
            except (DnsError, IndexError, ValueError, struct.error):
                self._err("dns_parse_error")
                return
        fm.service.add("dns")
        op = v.op
        if not (op >> 15) & 1:  # a query
            if v.id in fm.dns_pending:
                self.dns_rows.append(fm.dns_pending.pop(v.id))
            fm.dns_pending[v.id] = self._dns_row(fm.uid, fm.slot, fm.netbios, ts_ns, v)
            return
        pending = fm.dns_pending.get(v.id)
        if pending is not None:
            q = v.qname
            if q and fm.netbios:
                q = netbios_name(q)
            if str(pending["qname"]).lower() != str(q).lower():
                pending = None  # mDNS: id 0 everywhere, an unrelated reply
        row = (
            fm.dns_pending.pop(v.id)
            if pending is not None
            else self._dns_row(fm.uid, fm.slot, fm.netbios, ts_ns, v)
        )
        self._dns_answer(row, ts_ns, v)
        self.dns_rows.append(row)

    def adopt_dns(self, uid: str, slot: int) -> None:
        """Parser state of a flow whose first query and answer went through the batch pairs
        (`capture.app.dnspairs`)."""
        fm = self.flows[uid] = FlowMeta(uid, True, slot, False)
        fm.dns_messages = 2
        fm.service.add("dns")

    @staticmethod
    def _dns_answer(row: dict[str, Any], ts_ns: int, v: DnsView) -> None:
        """Complete a query's row with its answer `v` (seen at ts_ns)."""
        op = v.op
        row["rtt"] = (ts_ns - row["ts"]) / 1e9 if row["ts"] != ts_ns else None
        rcode = op & 15
        row["rcode"] = rcode
        row["rcode_name"] = RCODES.get(rcode, str(rcode))
        row["aa"] = bool((op >> 10) & 1)
        row["tc"] = bool((op >> 9) & 1)
        row["ra"] = bool((op >> 7) & 1)
        row["answers"], row["ttls"] = v.answers, v.ttls
        row["rejected"] = rcode != 0 and not v.answers

    @staticmethod
    def _dns_row(uid: str, slot: int, netbios: bool, ts_ns: int, v: DnsView) -> dict[str, Any]:
        # mDNS answers often carry no question: the first answer names the query, as in Zeek
        qname = v.qname
        if qname and netbios:
            qname = netbios_name(qname)
        op = v.op
        opcode = (op >> 11) & 15
        return {
            "ts": ts_ns,
            "uid": uid,
            "slot": slot,
            "trans_id": v.id,
            "rtt": None,
            "qname": qname,
            "qclass": v.qclass,
            "qclass_name": QCLASSES.get(v.qclass) if v.qclass is not None else None,
            "qtype": v.qtype,
            "qtype_name": QTYPES.get(v.qtype) if v.qtype is not None else None,
            "rd": bool((op >> 8) & 1),
            "z": (op >> 4) & 7,
            "opcode": opcode,
            "opcode_name": OPCODES.get(opcode),
            "answers": [],
            "ttls": [],
            "rcode": None,
            "rcode_name": None,
            "aa": False,
            "tc": False,
            "ra": False,
            "rejected": False,
        }

    def end(self, uid: str) -> dict[str, Any]:
        """The flow ended: its metadata (for the flow row); pending queries become rows."""
        fm = self.flows.pop(uid, None)
        if fm is None:
            return {}
        head = bytes(fm.dirs[0].buf)
        if not fm.head_done[0] and head and not fm.is_dns:
            # budget ran out mid-head (a request sent in many tiny segments): use whole lines
            sp = head.find(b" ")
            if 0 < sp <= 12 and head[:sp] in HTTP_METHODS:
                fm.service.add("http")
                fm.http_method = head[:sp].decode("ascii")
                fm.http_host = http_host(head[: head.rfind(b"\r\n") + 1])
        fm.dirs[0].buf.clear()
        self.dns_rows.extend(fm.dns_pending.values())
        order = ("dns", "http", "smtp", "pop3", "ftp", "ssh", "ssl")
        svc = ",".join(s for s in order if s in fm.service)
        return {
            "service": svc or None,
            "server_name": fm.server_name,
            "tls_version": fm.tls_version,
            "http_host": fm.http_host,
            "http_method": fm.http_method,
        }

    def take_dns_rows(self) -> list[dict[str, Any]]:
        rows, self.dns_rows = self.dns_rows, []
        return rows

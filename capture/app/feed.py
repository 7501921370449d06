"""Which packets reach the application-metadata parsers, and the one-packet fast path.

Per flow slot: a budget of payload packets (`APP_BUDGET`, more for DNS ports), whether it is a
DNS port flow, and what the C fast path (`capture.app.scan`) settled. For each batch, with
array code: candidates are the first packets with payload of flows that still have budget; a
flow whose first payload cannot start anything we read is dropped at once; a flow whose first
payload is the client's complete TLS ClientHello or HTTP request head is settled by the fast
path (`_fast_heads`), and only the rest go, in packet order, to `AppMeta` (DNS datagrams
already read by the batch DNS scan, `capture.app.dnsscan`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from capture.app.dnspairs import PairData, pair_data, pairs_ok
from capture.app.dnsscan import DnsScan, DnsView
from capture.app.dnsscan import scan_raw as scan_dns
from capture.app.heads import norm_host, tls_version_name
from capture.app.meta import DNS_PORTS, AppMeta
from capture.app.scan import KIND_CH, KIND_HTTP, KIND_SH, app_scan, candidates
from capture.batch import PacketBatch
from capture.flow.lazy import grown
from capture.flow.order import first_of_each
from capture.flow.uids import UidLookup

APP_BUDGET = 16  # payload packets per flow offered to AppMeta (DNS flows: more)
APP_BUDGET_DNS = 64
DNS_PORT = np.zeros(65536, bool)
DNS_PORT[list(DNS_PORTS)] = True
# First payload bytes that can begin what AppMeta reads: a TLS handshake record, an HTTP
# method or other text command (A-Z), a server banner (220, +OK, * OK).
_FIRST_BYTE = np.zeros(256, bool)
_FIRST_BYTE[[0x16, ord("+"), ord("*"), *range(ord("0"), ord("9") + 1)]] = True
_FIRST_BYTE[ord("A") : ord("Z") + 1] = True
APP_COLUMNS = ("service", "server_name", "tls_version", "http_host", "http_method")


# service of a flow settled by the fast path, by its `_fast_kind` (0: not settled)
FAST_SERVICE = np.array([None, "ssl", "http", "dns"], object)


class AppFeed:
    """Application-metadata state of one capture source's flow slots."""

    def __init__(self) -> None:
        self.app = AppMeta()
        self._budget = np.zeros(0, np.int32)  # per slot: payload packets AppMeta may still see
        self._dns = np.zeros(0, np.int8)  # per slot: 1 a DNS port, 2 NetBIOS name service
        self._started = np.zeros(0, bool)  # per slot: AppMeta has seen a packet
        # per slot, what the C fast path read (`_fast_kind`: 0 none, 1 TLS, 2 HTTP, 3 DNS
        # pair): the TLS server name or HTTP host, the HTTP method, the ServerHello's version
        self._fast_kind = np.zeros(0, np.int8)
        self._fast_name = np.zeros(0, object)
        self._fast_method = np.zeros(0, object)
        self._fast_ver = np.zeros(0, np.int32)  # -1: none
        self._in_app = np.zeros(0, bool)  # per slot: AppMeta has (had) the flow
        self._scratch = np.zeros(0, np.int32)  # per slot: zero between calls (`candidates`)
        self._dns_pairs_made: list[PairData] = []  # `dns` rows of query/answer pairs
        # the texts the fast path made, by their bytes: one string object for every flow to
        # the same server name, HTTP host or method (`_texts`)
        self._sni: dict[bytes, str | None] = {}
        self._hosts: dict[bytes, str | None] = {}
        self._methods: dict[bytes, str | None] = {}

    def grow(self, cap: int) -> None:
        """Make room for `cap` flow slots."""
        old = self._budget.size
        if old < cap:
            # zeroed memory: slots past the ones in use cost nothing resident (`grown`)
            self._budget = grown(self._budget, (cap,))
            self._dns = grown(self._dns, (cap,))
            self._started = grown(self._started, (cap,))
            self._fast_kind = grown(self._fast_kind, (cap,))
            self._in_app = grown(self._in_app, (cap,))
            self._scratch = np.zeros(cap, np.int32)
            more = np.full(cap - old, None, object)
            self._fast_name = np.concatenate([self._fast_name, more])
            self._fast_method = np.concatenate([self._fast_method, more])
            self._fast_ver = np.concatenate([self._fast_ver, np.full(cap - old, -1, np.int32)])

    def state_bytes_per_flow(self) -> int:
        """Bytes per flow slot kept here (the arrays; the fast path's texts and `AppMeta`'s
        parse state, bounded per flow, come on top)."""
        arrays = (self._budget, self._dns, self._started, self._fast_kind, self._in_app,
                  self._fast_name, self._fast_method, self._fast_ver)  # fmt: skip
        return sum(a.itemsize for a in arrays)

    def new_flows(
        self,
        new: npt.NDArray[np.int64],
        orig_p: npt.NDArray[np.uint16],
        resp_p: npt.NDArray[np.uint16],
    ) -> None:
        """Fresh state for flows created in slots `new` (with their ports)."""
        dns = DNS_PORT[orig_p] | DNS_PORT[resp_p]
        nbns = (orig_p == 137) | (resp_p == 137)
        self._dns[new] = np.where(nbns, 2, dns.astype(np.int8))
        self._started[new] = False
        self._fast_kind[new] = 0
        self._in_app[new] = False
        self._budget[new] = np.where(dns, APP_BUDGET_DNS, APP_BUDGET)
        self._fast_name[new] = None
        self._fast_method[new] = None
        self._fast_ver[new] = -1

    def feed(
        self,
        b: PacketBatch,
        pkt: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        is_orig: npt.NDArray[np.bool_],
        uids: UidLookup,
    ) -> None:
        """Offer the batch's packets (`pkt`, in flow `slot`, from the originator or not) to
        the fast path and `AppMeta`, each flow's first packets only; `dns` rows collect in
        `self.app`."""
        # candidates (payload, not a later fragment, budget left) and the rank of each among
        # its flow's candidates in this batch: one C pass
        idx, rank = candidates(b, pkt, slot, self._budget, self._scratch)
        if idx.size == 0:
            return
        sl = slot[idx]
        # A flow whose first payload cannot start anything AppMeta reads (TLS handshake, a
        # text command or banner, DNS) is dropped at once, without a Python call.
        first = rank == 0
        byte0 = b.buf[b.payload_off[pkt[idx[first]]]]
        fs = sl[first]
        dull = ~(_FIRST_BYTE[byte0] | (self._dns[fs] > 0) | self._started[fs])
        if dull.any():
            self._budget[fs[dull]] = 0
        keep = (rank < self._budget[sl]) & (self._budget[sl] > 0)
        idx = idx[keep]
        # a flow's kept candidates are its ranks 0 .. budget-1: rank 0 is its first here
        first_here = rank[keep] == 0
        if idx.size == 0:
            return
        sl = slot[idx]
        self._started[sl] = True
        p_idx = pkt[idx]
        orig = is_orig[idx]
        dnsf = self._dns[sl]
        plain = (dnsf == 0) & ~self._in_app[sl]  # no DNS port, AppMeta has not seen it
        # heads that fit one packet (TLS hellos, HTTP request heads) are read in C
        kind, a_off, a_len, ver = app_scan(b.buf, b.payload_off[p_idx], b.payload_cap[p_idx])
        self._fast_heads(b, sl, p_idx, orig, first_here, plain, kind, a_off, a_len, ver)
        # the rest goes to AppMeta in packet order: flows it already has, DNS, and flows
        # whose first payload is not a one-packet head
        rest = np.flatnonzero(~(plain & (self._fast_kind[sl] > 0)))
        if rest.size == 0:
            return
        udp_dns = (dnsf[rest] > 0) & (b.proto[p_idx[rest]] == 17)
        views: list[DnsView | None] = []
        if udp_dns.any():
            d = p_idx[rest[udp_dns]]
            sc = scan_dns(b.buf, b.payload_off[d], b.payload_cap[d])
            left = self._dns_pairs(b, sl, p_idx, rest[udp_dns], sc, uids)
            if left is None:
                views = [sc.view(i) for i in range(d.size)]
            else:  # query/answer pairs settled: the other candidates go on
                views = [sc.view(i) for i in np.flatnonzero(left).tolist()]
                stay = np.ones(rest.size, bool)
                stay[np.flatnonzero(udp_dns)[~left]] = False
                rest, udp_dns = rest[stay], udp_dns[stay]
                if rest.size == 0:
                    return
        vi = iter(views)
        budget, in_app, fk = self._budget, self._in_app, self._fast_kind
        app = self.app
        for j, s, o, ud in zip(
            rest.tolist(), sl[rest].tolist(), orig[rest].tolist(), udp_dns.tolist(), strict=True
        ):
            v = next(vi) if ud else None
            if budget[s] <= 0:
                continue
            p = int(p_idx[j])
            if fk[s] == 3 and not in_app[s]:  # its first query and answer went by the pairs
                app.adopt_dns(uids[s], s)
            in_app[s] = True
            if ud:
                more = app.dns_datagram(
                    uids[s], int(dnsf[j]), s, int(b.ts_ns[p]), b.payload(p) if v is None else b"", v
                )
            else:
                more = app.packet(
                    uids[s],
                    int(dnsf[j]),
                    s,
                    bool(o),
                    int(b.ts_ns[p]),
                    b.payload(p),
                    int(b.tcp_seq[p]) if b.proto[p] == 6 else None,
                )
            budget[s] = budget[s] - 1 if more else 0

    def _dns_pairs(
        self,
        b: PacketBatch,
        sl: npt.NDArray[np.int64],
        p_idx: npt.NDArray[np.int64],
        cand: npt.NDArray[np.int64],
        sc: DnsScan,
        uids: UidLookup,
    ) -> npt.NDArray[np.bool_] | None:
        """DNS flows (not NetBIOS) new to AppMeta whose candidates in this batch (`cand`, the
        UDP DNS ones, scanned as `sc`) are exactly a query and its answer: their `dns` rows
        are made as columns (`capture.app.dnspairs`, taken by `take_dns_pairs`), no
        per-flow parser state. Returns which candidates are still to be fed (None: all)."""
        s_c = sl[cand]
        ok = (self._dns[s_c] == 1) & ~self._in_app[s_c] & (self._fast_kind[s_c] == 0)
        if not ok.any():
            return None
        slots, first, counts = np.unique(s_c, return_index=True, return_counts=True)
        pair = counts == 2
        pair &= ok[first]
        if not pair.any():
            return None
        # the pair's second candidate: the next one of the same slot in packet order
        order = np.argsort(s_c, kind="stable")
        start = np.searchsorted(s_c[order], slots[pair])
        i1, i2 = order[start], order[start + 1]
        good, names = pairs_ok(sc, i1, i2)
        if not good.any():
            return None
        q, r, done = i1[good], i2[good], slots[pair][good]
        ts = b.ts_ns
        self._dns_pairs_made.append(
            pair_data(sc, q, r, names, ts[p_idx[cand[q]]], ts[p_idx[cand[r]]], done, uids)
        )
        keep = np.ones(cand.size, bool)
        keep[q] = keep[r] = False
        self._budget[done] -= 2
        self._fast_kind[done] = 3
        return keep

    def take_dns_pairs(self) -> list[PairData]:
        """The query/answer pairs settled since the last call (their rows come before
        `AppMeta`'s rows of the same batch: take these first)."""
        made, self._dns_pairs_made = self._dns_pairs_made, []
        return made

    def _fast_heads(
        self,
        b: PacketBatch,
        sl: npt.NDArray[np.int64],
        p_idx: npt.NDArray[np.int64],
        orig: npt.NDArray[np.bool_],
        first: npt.NDArray[np.bool_],
        plain: npt.NDArray[np.bool_],
        kind: npt.NDArray[np.int32],
        a_off: npt.NDArray[np.int64],
        a_len: npt.NDArray[np.int32],
        ver: npt.NDArray[np.int32],
    ) -> None:
        """Flows AppMeta has not seen whose first payload is the client's complete TLS
        ClientHello or HTTP request head are settled here, without AppMeta: the head gives
        the server name or HTTP host and method; for TLS, the server's first payload then
        gives the version (if it is a ServerHello) and ends the flow's budget. Candidates
        (`sl` ...) are in packet order, at most one flow budget each; `first`: the first
        candidate of its flow in the batch."""
        fk, budget, buf = self._fast_kind, self._budget, b.buf
        head = plain & first & orig & (fk[sl] == 0) & ((kind == KIND_CH) | (kind == KIND_HTTP))
        hi = np.flatnonzero(head)
        mv = buf.data  # slices of a memoryview: no array object per head (a loop of
        # slices is faster than a gather and a conversion for the hundreds of a batch)
        ch = hi[kind[hi] == KIND_CH]
        if ch.size:  # slots are distinct: one head per flow
            self._fast_name[sl[ch]] = _texts(
                self._sni,
                [
                    mv[ao : ao + al].tobytes()
                    for ao, al in zip(a_off[ch].tolist(), a_len[ch].tolist(), strict=True)
                ],
                _sni_text,
            )
            fk[sl[ch]] = 1
        ht = hi[kind[hi] == KIND_HTTP]
        if ht.size:  # the Host value (a_len -1: none) and the method (ver: its length)
            hosts = _texts(
                self._hosts,
                [
                    mv[ao : ao + al].tobytes() if al >= 0 else None
                    for ao, al in zip(a_off[ht].tolist(), a_len[ht].tolist(), strict=True)
                ],
                norm_host,
            )
            pos = b.payload_off[p_idx[ht]].tolist()
            methods = _texts(
                self._methods,
                [mv[po : po + v].tobytes() for po, v in zip(pos, ver[ht].tolist(), strict=True)],
                _method_text,
            )
            s_ht = sl[ht]
            self._fast_name[s_ht] = hosts
            self._fast_method[s_ht] = methods
            fk[s_ht] = 2
            budget[s_ht] = 0
        # TLS flows settled by a ClientHello: the server's first payload ends them
        srv = np.flatnonzero(plain & (fk[sl] == 1) & ~orig)
        if srv.size == 0:
            return
        srv = srv[first_of_each(sl[srv])]
        srv = srv[budget[sl[srv]] > 0]
        sh = srv[kind[srv] == KIND_SH]
        self._fast_ver[sl[sh]] = ver[sh]
        budget[sl[srv]] = 0

    def name_settled(self, s: int, uid: str) -> bool:
        """Whether the flow in slot `s` has shown its TLS server name or that it has none: the
        client's first head read (a ClientHello, even over several segments, an HTTP request,
        anything else), a first payload nothing here reads, a DNS port, a gap in the client's
        bytes, or the parse budget spent. Until then `capture.subjects.gate` holds a subject's
        packets."""
        if self._dns[s] or self._budget[s] <= 0:
            return True
        if self._in_app[s]:
            fm = self.app.flows.get(uid)
            return fm is None or fm.head_done[0] or fm.dirs[0].dead or fm.starttls
        return bool(self._fast_kind[s] > 0)

    def server_name(self, s: int, uid: str) -> str | None:
        """The TLS server name of the flow in slot `s`, once a ClientHello gave it."""
        if self._in_app[s]:
            fm = self.app.flows.get(uid)
            return fm.server_name if fm is not None else None
        return self._fast_name[s] if self._fast_kind[s] == 1 else None

    def end_flows(
        self, uids: UidLookup, slots: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[np.object_]]:
        """The flows in `slots` ended: their `APP_COLUMNS` (object arrays of str or None;
        AppMeta's state is dropped). `uids`: each slot's uid (`uids[slot]`, the flow
        table's `UidSlots`)."""
        n = slots.size
        meta = {k: np.full(n, None, object) for k in APP_COLUMNS}
        in_app = self._in_app[slots]
        ia = np.flatnonzero(in_app)
        for i, s in zip(ia.tolist(), slots[ia].tolist(), strict=True):  # flows AppMeta parsed
            for k, v in self.app.end(uids[s]).items():
                meta[k][i] = v
        fk = self._fast_kind[slots]
        fi = np.flatnonzero(~in_app & (fk > 0))  # C fast path flows
        if fi.size:
            fs, kf = slots[fi], fk[fi]
            meta["service"][fi] = FAST_SERVICE[kf]
            name = self._fast_name[fs]
            tls, http = kf == 1, kf == 2
            meta["server_name"][fi[tls]] = name[tls]
            meta["http_host"][fi[http]] = name[http]
            meta["http_method"][fi[http]] = self._fast_method[fs[http]]
            v = self._fast_ver[fs]
            hv = np.flatnonzero(tls & (v >= 0))
            if hv.size:  # a few distinct versions: each named once
                u, inv = np.unique(v[hv], return_inverse=True)
                names = np.array([tls_version_name(x) for x in u.tolist()], object)
                meta["tls_version"][fi[hv]] = names[inv]
        return meta


TEXTS_MAX = 16384  # distinct texts kept per kind; past it the cache starts again (`_texts`)


def _texts(
    cache: dict[bytes, str | None],
    raws: list[bytes | None],
    make: Callable[[bytes], str | None],
) -> list[str | None]:
    """`make(raw)` for each of `raws` (None stays None), the same string object for the same
    bytes: a server name repeats across thousands of flows, and each flow slot keeps its text
    until the flow ends (200k flows open at once: ~10 MiB less). At most TEXTS_MAX texts are
    kept, so traffic with a new name per flow costs no more than before."""
    if len(cache) > TEXTS_MAX:
        cache.clear()
    out: list[str | None] = []
    for raw in raws:
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(cache[raw])
        except KeyError:
            out.append(cache.setdefault(raw, make(raw)))
    return out


def _sni_text(raw: bytes) -> str | None:
    return raw.decode("ascii", "replace").lower() or None


def _method_text(raw: bytes) -> str | None:
    return raw.decode("ascii")

"""The packet pipeline: decoded batches -> flows + application metadata -> `flow` and `dns`
metadata rows, and subjects' packets -> their authorisations' archives.

`Pipeline.feed(batch)` is shared by replay (`replay()`, capture files) and live capture
(`capture.live`). Per batch: the flow table assigns packets to flows (array code); new flows
get their principal (internal address -> identity map at the flow's first packet);
the first packets of each flow go to `AppMeta`; packets of flows whose principal has any
`packets` authorisation are checked with `decide` at each packet's own timestamp and, when
covered, written to the archive as pcapng (one record per flow per segment); ended flows
become `flow` rows. Nothing of a non-subject's payload is kept beyond `AppMeta`'s bounded
parse buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from appliance.policy.decide import decide
from appliance.policy.snapshot import NoIdentity, Snapshot
from capture import CaptureError
from capture.appmeta import DNS_PORTS, AppMeta
from capture.appscan import KIND_CH, KIND_HTTP, KIND_SH, app_scan
from capture.batch import PacketBatch
from capture.decode import Decoder
from capture.flowkeys import PROTO_NAMES, community_ids
from capture.flowrows import Columns, addr_texts, count
from capture.flows import FlowConfig, FlowTable
from capture.heads import norm_host, tls_version_name
from capture.netset import NetSet
from capture.reader import open_capture
from capture.subjects import SubjectRecorder
from capture.summary import Summary
from store.archive import Archive
from store.metadata import MetadataWriter
from store.paths import DataPaths

APP_BUDGET = 16  # payload packets per flow offered to AppMeta (DNS flows: more)
APP_BUDGET_DNS = 64
ROW_BLOCK = 8192  # rows handed to a writer at once
_TS = pa.timestamp("us", tz="UTC")
_DNS_PORT = np.zeros(65536, bool)
_DNS_PORT[list(DNS_PORTS)] = True
# First payload bytes that can begin what AppMeta reads: a TLS handshake record, an HTTP
# method or other text command (A-Z), a server banner (220, +OK, * OK).
_FIRST_BYTE = np.zeros(256, bool)
_FIRST_BYTE[[0x16, ord("+"), ord("*"), *range(ord("0"), ord("9") + 1)]] = True
_FIRST_BYTE[ord("A") : ord("Z") + 1] = True
APP_COLUMNS = ("service", "server_name", "tls_version", "http_host", "http_method")


@dataclass
class FastMeta:
    """What the C fast path read for a flow (single-packet TLS hellos, HTTP heads)."""

    service: str
    server_name: str | None = None
    tls_version: str | None = None
    http_host: str | None = None
    http_method: str | None = None


class Pipeline:
    """One capture source (a file or an interface) into the metadata streams and archives."""

    def __init__(
        self,
        *,
        paths: DataPaths,
        gateway: str,
        writer_name: str,
        snapshot: Callable[[], Snapshot],
        internal_networks: Iterable[str],
        archive: Archive | None = None,
        interface: str | None = None,
        flow_config: FlowConfig | None = None,
        on_archive_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.flow_w = MetadataWriter("flow", writer_name, paths=paths, gateway=gateway)
        self.dns_w = MetadataWriter("dns", writer_name, paths=paths, gateway=gateway)
        self.snapshot = snapshot
        self.internal = NetSet(internal_networks)
        self.recorder = SubjectRecorder(archive, on_archive_error) if archive is not None else None
        self.interface = interface
        self.summary = Summary()
        self._flow_config = flow_config
        self._flow_buf: list[dict[str, Any]] = []
        self._dns_buf: list[dict[str, Any]] = []
        self._reset_source()

    def _reset_source(self) -> None:
        self.table = FlowTable(self._flow_config)
        self.app = AppMeta()
        self._budget = np.zeros(0, np.int32)  # per slot: payload packets AppMeta may still see
        self._dns = np.zeros(0, np.int8)  # per slot: 1 a DNS port, 2 NetBIOS name service
        self._started = np.zeros(0, bool)  # per slot: AppMeta has seen a packet
        self._fast: list[FastMeta | None] = []  # per slot: heads read by the C fast path
        self._principal: list[str | None] = []  # per slot

    # ---- per batch -----------------------------------------------------------------------
    def feed(self, batch: PacketBatch) -> None:
        self.summary.packets += len(batch)
        assign, ended = self.table.add(batch)
        self._new_flows(assign.new_slots)
        self._appmeta(batch, assign.pkt, assign.slot, assign.is_orig)
        self._archive(batch, assign.pkt, assign.slot)
        self._emit(ended)

    def tick(self, now_ns: int | None = None) -> None:
        """End idle flows without new packets (live capture calls this about once a second)."""
        ended: list[Columns] = []
        self.table.expire(now_ns if now_ns is not None else time.time_ns(), ended)
        self._emit(ended)
        self.flush_rows()

    def _grow(self) -> None:
        cap = self.table.capacity
        old = self._budget.size
        if old < cap:
            self._budget = np.concatenate([self._budget, np.zeros(cap - old, np.int32)])
            self._dns = np.concatenate([self._dns, np.zeros(cap - old, np.int8)])
            self._started = np.concatenate([self._started, np.zeros(cap - old, bool)])
            self._principal.extend([None] * (cap - old))
            self._fast.extend([None] * (cap - old))

    def _new_flows(self, new: npt.NDArray[np.int64]) -> None:
        self._grow()
        if new.size == 0:
            return
        t = self.table
        dns = _DNS_PORT[t.orig_p[new]] | _DNS_PORT[t.resp_p[new]]
        nbns = (t.orig_p[new] == 137) | (t.resp_p[new] == 137)
        self._dns[new] = np.where(nbns, 2, dns.astype(np.int8))
        self._started[new] = False
        self._budget[new] = np.where(dns, APP_BUDGET_DNS, APP_BUDGET)
        for sl in new.tolist():
            self._principal[sl] = None
            self._fast[sl] = None
        lo, lr = self.internal.contains(t.orig_h[new]), self.internal.contains(t.resp_h[new])
        inside = np.flatnonzero(lo | lr)
        snap = self.snapshot()
        if inside.size == 0 or isinstance(snap.identity, NoIdentity):
            return
        slots = new[inside]
        addrs = np.where(lo[inside][:, None], t.orig_h[slots], t.resp_h[slots])
        ips = addr_texts(addrs)
        ats = (t.first_ts[slots] / 1e9).tolist()
        many = getattr(snap.identity, "resolve_ip_many", None)
        if many is not None:
            found = many(ips, ats)
        else:
            found = [
                snap.resolve(ip=ip, at=datetime.fromtimestamp(at, UTC))
                for ip, at in zip(ips, ats, strict=True)
            ]
        for sl, p in zip(slots.tolist(), found, strict=True):
            self._principal[sl] = p

    def _appmeta(
        self,
        b: PacketBatch,
        pkt: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        is_orig: npt.NDArray[np.bool_],
    ) -> None:
        has = (b.payload_cap[pkt] > 0) & (self._budget[slot] > 0) & (b.frag[pkt] <= 1)
        idx = np.flatnonzero(has)
        if idx.size == 0:
            return
        # rank of each candidate among its flow's candidates in this batch
        sl = slot[idx]
        order = np.argsort(sl, kind="stable")
        ss = sl[order]
        start = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
        rank = np.empty(idx.size, np.int64)
        rank[order] = np.arange(idx.size) - np.repeat(start, np.diff(np.r_[start, idx.size]))
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
        self._started[slot[idx]] = True
        # heads that fit one packet (TLS hellos, HTTP request heads) are read in C
        p_idx = pkt[idx]
        kind, a_off, a_len, ver = app_scan(b.buf, b.payload_off[p_idx], b.payload_cap[p_idx])
        proto = b.proto
        uids, dnsf, budget, fast = self.table.uids, self._dns, self._budget, self._fast
        in_app = self.app.flows
        buf = b.buf
        for j, s, o, k, ao, al, v in zip(
            idx.tolist(),
            slot[idx].tolist(),
            is_orig[idx].tolist(),
            kind.tolist(),
            a_off.tolist(),
            a_len.tolist(),
            ver.tolist(),
            strict=True,
        ):
            if budget[s] <= 0:
                continue
            uid = uids[s]
            if uid not in in_app and not dnsf[s]:
                f = fast[s]
                if f is None and o and k in (KIND_CH, KIND_HTTP):
                    if k == KIND_CH:
                        sni = buf[ao : ao + al].tobytes().decode("ascii", "replace").lower()
                        fast[s] = FastMeta("ssl", sni or None)
                        continue
                    host = buf[ao : ao + al].tobytes() if al >= 0 else None
                    method = buf[int(b.payload_off[pkt[j]]) : int(b.payload_off[pkt[j]]) + v]
                    fast[s] = FastMeta(
                        "http", None, None, norm_host(host), method.tobytes().decode("ascii")
                    )
                    budget[s] = 0
                    continue
                if f is not None:
                    if not o:  # the server's first payload: a ServerHello, or nothing for us
                        if k == KIND_SH:
                            f.tls_version = tls_version_name(v)
                        budget[s] = 0
                    continue
            p = int(pkt[j])
            more = self.app.packet(
                uid,
                int(dnsf[s]),
                s,
                bool(o),
                int(b.ts_ns[p]),
                b.payload(p),
                int(b.tcp_seq[p]) if proto[p] == 6 else None,
            )
            budget[s] = budget[s] - 1 if more else 0
        self._emit_dns()

    # ---- subjects' packets -> archive ------------------------------------------------------
    def _archive(
        self, b: PacketBatch, pkt: npt.NDArray[np.int64], slot: npt.NDArray[np.int64]
    ) -> None:
        snap = self.snapshot()
        subjects = {a.subject for a in snap.authorisations if "packets" in a.channels}
        if not subjects or self.recorder is None:
            return
        prin = self._principal
        us = np.unique(slot)
        hit = us[np.fromiter((prin[s] in subjects for s in us.tolist()), bool, us.size)]
        if hit.size == 0:
            return
        for j in np.flatnonzero(np.isin(slot, hit)).tolist():
            s = int(slot[j])
            p = int(pkt[j])
            principal = prin[s]
            ts_ns = int(b.ts_ns[p])
            at = datetime.fromtimestamp(ts_ns / 1e9, UTC)
            d = decide(snap, principal, "packets", at)  # at each packet's own instant
            if not d.full or principal is None:
                self.recorder.not_covered(self.table.uids[s])
            else:
                self.recorder.packet(
                    self.table.uids[s],
                    principal,
                    d.refs,
                    at,
                    int(b.linktype[p]),
                    ts_ns,
                    b.frame(p),
                    int(b.wire_len[p]),
                )

    # ---- rows ----------------------------------------------------------------------------
    def _emit(self, ended: list[Columns]) -> None:
        for cols in ended:
            n = count(cols)
            if n:
                self._emit_flows(cols, n)
        self._emit_dns()

    def _emit_flows(self, cols: Columns, n: int) -> None:
        t = self.table
        slots = np.asarray(cols["slot"], np.int64)
        meta: dict[str, list[Any]] = {k: [None] * n for k in APP_COLUMNS}
        empty: list[str] = []  # shared: rows of non-subjects, never mutated
        refs: list[list[str]] = [empty] * n
        rids: list[list[str]] = [empty] * n
        app, rec = self.app.flows, self.recorder
        fast = self._fast
        for i, (uid, sl) in enumerate(zip(cols["uid"], cols["slot"], strict=True)):
            if uid in app:
                for k, v in self.app.end(uid).items():
                    meta[k][i] = v
            else:
                f = fast[sl]
                if f is not None:
                    meta["service"][i] = f.service
                    meta["server_name"][i] = f.server_name
                    meta["tls_version"][i] = f.tls_version
                    meta["http_host"][i] = f.http_host
                    meta["http_method"][i] = f.http_method
            done = rec.end(uid) if rec is not None and rec.flows else None
            if done is not None:
                refs[i], rids[i] = done
        self.summary.flows += n
        self._buffer(
            self._flow_buf,
            {
                "ts": (np.asarray(cols["ts"], np.int64) // 1000).tolist(),
                "uid": cols["uid"],
                "principal": [self._principal[s] for s in slots.tolist()],
                "client_ip": cols["orig_h"],
                "client_port": cols["orig_p"],
                "server_ip": cols["resp_h"],
                "server_port": cols["resp_p"],
                "proto": cols["proto"],
                "duration": (np.asarray(cols["duration_ns"], np.int64) / 1e9).tolist(),
                "orig_bytes": cols["orig_bytes"],
                "resp_bytes": cols["resp_bytes"],
                "conn_state": cols["conn_state"],
                "local_orig": self.internal.contains(t.orig_h[slots]).tolist(),
                "local_resp": self.internal.contains(t.resp_h[slots]).tolist(),
                "missed_bytes": cols["missed_bytes"],
                "history": cols["history"],
                "orig_pkts": cols["orig_pkts"],
                "orig_ip_bytes": cols["orig_ip_bytes"],
                "resp_pkts": cols["resp_pkts"],
                "resp_ip_bytes": cols["resp_ip_bytes"],
                "ip_proto": cols["ip_proto"],
                "interface": [self.interface] * n,
                **meta,
                "refs": refs,
                "record_ids": rids,
                "community_id": cols["community_id"],
                "tunnel_parents": cols["tunnel_parents"],
            },
        )

    def _emit_dns(self) -> None:
        rows = self.app.take_dns_rows()
        if not rows:
            return
        n = len(rows)
        t = self.table
        slots = np.asarray([r.pop("slot") for r in rows], np.int64)
        cols: dict[str, Any] = {k: [r[k] for r in rows] for k in rows[0]}
        cols["ts"] = (np.asarray(cols["ts"], np.int64) // 1000).tolist()
        oh, rh, op, rp = t.orig_h[slots], t.resp_h[slots], t.orig_p[slots], t.resp_p[slots]
        cols["client_ip"], cols["server_ip"] = addr_texts(oh), addr_texts(rh)
        cols["client_port"], cols["server_port"] = op.tolist(), rp.tolist()
        cols["proto"] = [PROTO_NAMES.get(p, "udp") for p in t.proto[slots].tolist()]
        cols["community_id"] = community_ids(oh, rh, t.proto[slots], op, rp)
        cols["principal"] = [self._principal[s] for s in slots.tolist()]
        cols["interface"] = [self.interface] * n
        empty: list[str] = []
        cols["refs"], cols["record_ids"] = [empty] * n, [empty] * n
        self._buffer(self._dns_buf, cols)
        self.summary.dns_rows += n

    def _buffer(self, buf: list[dict[str, Any]], cols: dict[str, Any]) -> None:
        """Rows go to the writers in blocks of ROW_BLOCK (one schema check per block);
        `flush_rows()` sends what is pending (end of a file, every second when live)."""
        buf.append(cols)
        if sum(len(c["uid"]) for c in buf) >= ROW_BLOCK:
            self.flush_rows()

    def flush_rows(self) -> None:
        for buf, writer in ((self._flow_buf, self.flow_w), (self._dns_buf, self.dns_w)):
            if not buf:
                continue
            merged = {k: [v for c in buf for v in c[k]] for k in buf[0]}
            merged["ts"] = pa.array(merged["ts"], _TS)
            buf.clear()
            writer.append_batch(merged)

    def end_source(self) -> None:
        """End of a capture file (or interface stop): every live flow becomes a row."""
        self._emit(self.table.flush())
        self.flush_rows()
        self.app.flows.clear()
        if self.recorder is not None:
            self.summary.archived_packets = self.recorder.archived
            self.summary.archive_errors = self.recorder.errors
        c = self.table.counters
        for k, v in vars(c).items():
            self.summary.flow_counters[k] = self.summary.flow_counters.get(k, 0) + v
        self._reset_source()

    def close(self) -> None:
        """Flush rows to durable storage and close the writers."""
        try:
            self.flush_rows()
            self.flow_w.flush()
            self.dns_w.flush()
        finally:
            self.flow_w.close()
            self.dns_w.close()


def replay(files: Iterable[str | Path], pipeline: Pipeline, *, max_packets: int = 65536) -> Summary:
    """Replay capture files through `pipeline` (each file its own flow table). A file whose
    header is broken is recorded in `summary.files_failed` and the others still run."""
    s = pipeline.summary
    for f in files:
        name = str(f)
        pipeline.interface = Path(name).name
        try:
            reader = open_capture(name)
        except CaptureError as exc:
            s.files_failed[name] = str(exc)
            continue
        dec = Decoder()
        try:
            with reader:
                for raw in reader.batches(max_packets):
                    pipeline.feed(dec.decode(raw))
        except CaptureError as exc:
            s.files_failed[name] = str(exc)
        finally:
            s.add_bad({f"reader_{k}": v for k, v in reader.summary.items()})
            s.add_bad(dec.summary)
            pipeline.end_source()
    return s

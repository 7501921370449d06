"""The packet pipeline: decoded batches -> flows + application metadata -> `flow` and `dns`
metadata rows, and subjects' packets -> their authorisations' archives.

`Pipeline.feed(batch)` is shared by replay (`replay()`, capture files) and live capture
(`capture.live`). Per batch: the flow table assigns packets to flows (array code); new flows
get their principal (internal address -> identity map at the flow's first packet);
the first packets of each flow go to `capture.app.feed` (one-packet heads and DNS in C, the
rest to `AppMeta`); `capture.subjects.gate` decides subjects' packets at each packet's own timestamp
(identity lease and authorisations then, the flow's TLS server name for the do-not-decrypt
list, holding a flow's packets until that name is known) and covered ones are written to the
archive as pcapng (`capture.subjects.recorder`, one record per flow per segment); ended flows become
`flow` rows (numbers as arrays, Arrow for text). The row's principal is the one at the flow's
first packet. `replay()`
reads and decodes on a background thread (`capture.read.prefetch`). Nothing of a non-subject's
payload is kept beyond `AppMeta`'s bounded parse buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from appliance.policy.snapshot import NoIdentity, Snapshot
from capture.app import AppFeed
from capture.app.dnspairs import PairData
from capture.app.dnsrows import DnsBlocks, FlowFields
from capture.batch import PacketBatch
from capture.flow import (
    BatchKeys,
    Columns,
    FlowConfig,
    FlowTable,
    NetSet,
    addr_texts,
    concat_column,
    count,
    empty_lists,
    repeat_text,
)
from capture.flow.uids import UidColumn
from capture.subjects import ArchiveGate, SubjectLimits, SubjectRecorder
from capture.summary import Summary
from store.archive import Archive
from store.paths import DataPaths

if TYPE_CHECKING:  # lazily: they load pyarrow (the writers are made at first use)
    from capture.subjects.bypassed import BypassedWeb
    from store.metadata import MetadataWriter

ROW_BLOCK = 8192  # rows handed to a writer at once
TRIM_INTERVAL_S = 1.0  # at most this often, free heap pages go back to the system (`_trim`)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere."""
    try:
        import ctypes

        fn: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return fn
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


class Pipeline:
    """One capture source (a file or an interface) into the metadata streams and archives."""

    PUBLISH_ROWS = 32768  # rows a writer keeps before it writes Parquet (store default: 1M)
    # Rows queued before append_batch waits for the journal: a replay can wait; live capture
    # keeps the store's default, so that a storage stall of a few seconds does not stop it
    QUEUE_ROWS = 32768
    LIVE_QUEUE_ROWS = 1_000_000

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
        bypassed: BypassedWeb | None = None,
        limits: SubjectLimits | None = None,
    ) -> None:
        # Rows queued for the journal and waiting for Parquet are memory: both bounded, so a
        # mass expiry of flows is written as it is made, not held
        self._queue_rows = self.QUEUE_ROWS if interface is None else self.LIVE_QUEUE_ROWS
        self._writer_args = (paths, gateway, writer_name)
        self._writers: tuple[MetadataWriter, MetadataWriter] | None = None  # made at first use
        self.snapshot = snapshot
        self.internal = NetSet(internal_networks)
        limits = limits or SubjectLimits()
        self.recorder: SubjectRecorder | None = None
        self.gate: ArchiveGate | None = None
        if archive is not None:
            self.recorder = limits.new_recorder(archive, on_archive_error)
            self.gate = ArchiveGate(self.recorder, self._flow_ip, limits)
        self.interface = interface
        self.summary = Summary()
        self._trimmed = time.monotonic()
        self._flow_config = flow_config
        self.bypassed = bypassed  # web rows for flows past the proxy (transparent subjects scope)
        self._flow_buf: list[dict[str, Any]] = []
        self._dns = DnsBlocks()  # dns rows until they are sent
        self._closed = False
        self._reset_source()

    def _reset_source(self) -> None:
        self.table = FlowTable(self._flow_config)
        self.appf = AppFeed()  # application metadata per flow slot
        self._principal = np.zeros(0, object)  # per slot: principal at the flow's first packet
        if self.gate is not None:
            self.gate.reset()

    def state_bytes_per_flow(self) -> int:
        """Bytes of per-flow state per flow slot: the flow table, application metadata, the
        archive gate and the principal (the figure the bench prints)."""
        gate = self.gate.state_bytes_per_flow() if self.gate is not None else 0
        return self.table.state_bytes_per_flow() + self.appf.state_bytes_per_flow() + gate + 8

    # ---- per batch -----------------------------------------------------------------------
    def feed(self, batch: PacketBatch, keys: BatchKeys | None = None) -> None:
        """Account a batch (`keys`: its `capture.flow.keys_of`, if made on another thread)."""
        self.summary.packets += len(batch)
        # the sweep before add: the slots of the flows it ends serve new flows at once
        self._emit(self.table.sweep(batch, keys))
        assign, ended = self.table.add(batch, keys)
        self._new_flows(assign.new_slots)
        self.appf.feed(batch, assign.pkt, assign.slot, assign.is_orig, self.table.uids)
        self._emit_dns()
        if self.gate is not None:
            g = self.gate
            g.feed(self.snapshot(), batch, assign.pkt, assign.slot, self.table.uids, self.appf)
        self._emit(ended)
        self._trim()

    def _trim(self) -> None:
        """Give free heap pages back to the system about once a second: flows end in waves
        and the row blocks are freed on the writer's thread, and glibc keeps the freed pages
        in the middle of its heaps (8M packets, 200k open flows: about 25 MiB less at the peak,
        at the same speed; docs/capture-flow-scale.md)."""
        now = time.monotonic()
        if _MALLOC_TRIM is not None and now - self._trimmed >= TRIM_INTERVAL_S:
            _MALLOC_TRIM(0)
            self._trimmed = time.monotonic()

    def tick(self, now_ns: int | None = None) -> None:
        """End idle flows without new packets (live capture calls this about once a second)."""
        self._emit(self.table.expire_rows(now_ns if now_ns is not None else time.time_ns()))
        if self.recorder is not None:
            self.recorder.sweep()
        self.flush_rows()

    def _grow(self) -> None:
        cap = self.table.span
        self.appf.grow(cap)
        if self._principal.size < cap:
            more = np.full(cap - self._principal.size, None, object)
            self._principal = np.concatenate([self._principal, more])
        if self.gate is not None:
            self.gate.grow(cap)

    def _new_flows(self, new: npt.NDArray[np.int64]) -> None:
        self._grow()
        if new.size == 0:
            return
        t = self.table
        self.appf.new_flows(new, t.orig_p[new], t.resp_p[new])
        self._principal[new] = None
        lo, lr = self.internal.contains(t.orig_h[new]), self.internal.contains(t.resp_h[new])
        inside = np.flatnonzero(lo | lr)
        if self.gate is not None:
            self.gate.new_flows(new, t.proto[new] == 6, lo | lr)
        snap = self.snapshot()
        if inside.size == 0 or isinstance(snap.identity, NoIdentity):
            return
        slots = new[inside]
        spans = getattr(snap.identity, "resolve_packed_spans", None)
        if spans is not None:  # the identity map: one dict lookup per flow, none if no leases
            hits: dict[int, tuple[str | None, int, int]] = {}
            if getattr(snap.identity, "has_ip_leases", True):
                addrs = np.where(lo[inside][:, None], t.orig_h[slots], t.resp_h[slots])
                packed = np.ascontiguousarray(addrs, np.uint8).view("V16").ravel().tolist()
                hits = spans(packed, (t.first_ts[slots] // 1000).tolist())
            if self.gate is not None:
                self.gate.seed(snap, slots, hits)  # keeps the lease windows
            for i, got in hits.items():
                self._principal[slots[i]] = got[0]
            return
        addrs = np.where(lo[inside][:, None], t.orig_h[slots], t.resp_h[slots])
        ips = addr_texts(addrs)
        if self.gate is not None:
            self.gate.set_ips(slots, ips)
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

    def _flow_ip(self, s: int) -> str:
        """The flow's internal address (the originator's if both are), "" if neither."""
        t = self.table
        for h in (t.orig_h[s : s + 1], t.resp_h[s : s + 1]):
            if self.internal.contains(h)[0]:
                return addr_texts(h)[0]
        return ""

    # ---- rows ----------------------------------------------------------------------------
    def _emit(self, ended: Iterable[Columns]) -> None:
        for cols in ended:
            n = count(cols)
            if n:
                self._emit_flows(cols, n)
        self._emit_dns()

    def _emit_flows(self, cols: Columns, n: int) -> None:
        t = self.table
        slots = np.asarray(cols["slot"], np.int64)
        uid_col = cols["uid"]  # Arrow (rows_for), or a list
        uids = UidColumn(uid_col)  # a list only if wanted (subjects' flows)
        if self.gate is not None:
            self.gate.end_flows(uids, slots, self.appf)  # held packets, while names are known
        meta = self.appf.end_flows(t.uids, slots)
        refs: Any = empty_lists(n)  # rows of non-subjects: no list per row
        rids: Any = refs
        rec = self.recorder
        if rec is not None and rec.flows:
            empty: list[str] = []  # shared: rows of non-subjects, never mutated
            refs, rids = [empty] * n, [empty] * n
            for i, uid in enumerate(uids):
                done = rec.end(uid)
                if done is not None:
                    refs[i], rids[i] = done
        self.summary.flows += n
        import pyarrow as pa  # (loaded by now: rows_for made the columns)

        text = pa.string()
        self._buffer(
            self._flow_buf,
            {
                "ts": np.asarray(cols["ts"], np.int64) // 1000,
                "uid": uid_col,
                "principal": pa.array(self._principal[slots], text),
                "client_ip": cols["orig_h"],
                "client_port": cols["orig_p"],
                "server_ip": cols["resp_h"],
                "server_port": cols["resp_p"],
                "proto": cols["proto"],
                "duration": np.asarray(cols["duration_ns"], np.int64) / 1e9,
                "orig_bytes": cols["orig_bytes"],
                "resp_bytes": cols["resp_bytes"],
                "conn_state": cols["conn_state"],
                "local_orig": self.internal.contains(t.orig_h[slots]),
                "local_resp": self.internal.contains(t.resp_h[slots]),
                "missed_bytes": cols["missed_bytes"],
                "history": cols["history"],
                "orig_pkts": cols["orig_pkts"],
                "orig_ip_bytes": cols["orig_ip_bytes"],
                "resp_pkts": cols["resp_pkts"],
                "resp_ip_bytes": cols["resp_ip_bytes"],
                "ip_proto": cols["ip_proto"],
                "interface": repeat_text(self.interface, n),
                **{k: pa.array(v, text) for k, v in meta.items()},
                "refs": refs,
                "record_ids": rids,
                "community_id": cols["community_id"],
                "tunnel_parents": cols["tunnel_parents"],
                "vlan": cols["vlan"],
                "inner_vlan": cols["inner_vlan"],
            },
        )

    def _emit_dns(self) -> None:
        # the pairs first: they were settled before AppMeta's rows of the same batch
        for pairs in self.appf.take_dns_pairs():
            self._dns_add(pairs, pairs.slots)
        rows = self.appf.app.take_dns_rows()
        if rows:
            self._dns_add(rows, np.fromiter((r["slot"] for r in rows), np.int64, len(rows)))

    def _dns_add(self, meta: PairData | list[dict[str, Any]], slots: npt.NDArray[np.int64]) -> None:
        """`dns` rows (AppMeta's fields) with their flows' fields, read now (the slots are
        reused later); they become Arrow columns when sent (`DnsBlocks`)."""
        t = self.table
        flow = FlowFields(
            t.orig_h[slots], t.resp_h[slots], t.orig_p[slots], t.resp_p[slots],
            t.proto[slots], self._principal[slots],
        )  # fmt: skip
        self._dns.add(meta, flow)
        self.summary.dns_rows += slots.size
        if self._dns.rows >= ROW_BLOCK:
            self.flush_rows()

    def _buffer(self, buf: list[dict[str, Any]], cols: dict[str, Any]) -> None:
        """Rows go to the writers in blocks of ROW_BLOCK (one schema check per block);
        `flush_rows()` sends what is pending (end of a file, every second when live)."""
        buf.append(cols)
        if sum(len(c["uid"]) for c in buf) >= ROW_BLOCK:
            self.flush_rows()

    def flush_rows(self) -> None:
        import pyarrow as pa  # lazily: the first packet does not wait for it

        ts = pa.timestamp("us", tz="UTC")
        if self._flow_buf:
            buf = self._flow_buf
            merged = {k: concat_column([c[k] for c in buf]) for k in buf[0]}
            merged["ts"] = pa.array(np.asarray(merged["ts"], np.int64), ts)
            buf.clear()
            if self.bypassed is not None:
                self.bypassed.add(merged)
            self.flow_w.append_batch(merged)
        dns = self._dns.columns(self.interface)
        if dns is not None:
            dns["ts"] = pa.array(dns["ts"], ts)
            self.dns_w.append_batch(dns)

    def end_source(self) -> None:
        """End of a capture file (or interface stop): every live flow becomes a row."""
        self._emit(self.table.end_all())
        self.flush_rows()
        self.appf.app.flows.clear()
        if self.recorder is not None:
            self.summary.archived_packets = self.recorder.archived
            self.summary.archive_errors = self.recorder.errors
        if self.gate is not None:
            self.summary.archive_hold_dropped += self.gate.hold.dropped
        c = self.table.counters
        for k, v in vars(c).items():
            self.summary.flow_counters[k] = self.summary.flow_counters.get(k, 0) + v
        self._reset_source()

    # ---- writers --------------------------------------------------------------------------
    @property
    def flow_w(self) -> MetadataWriter:
        return self._open_writers()[0]

    @property
    def dns_w(self) -> MetadataWriter:
        return self._open_writers()[1]

    @property
    def writers_open(self) -> bool:
        """False until a writer exists: until then no row can have been appended."""
        return self._writers is not None

    def _open_writers(self) -> tuple[MetadataWriter, MetadataWriter]:
        """The `flow` and `dns` writers, made at first use (the first rows, `close()`, or a
        caller that asks): they load pyarrow, which the first packet does not need."""
        if self._writers is None:
            from store.metadata import MetadataWriter

            paths, gateway, name = self._writer_args
            rows, queue = self.PUBLISH_ROWS, self._queue_rows
            flow, dns = (
                MetadataWriter(st, name, paths=paths, gateway=gateway, parquet_rows=rows,
                               queue_limit=queue)
                for st in ("flow", "dns")
            )  # fmt: skip
            self._writers = (flow, dns)
        return self._writers

    def close(self) -> None:
        """Hand the pending rows to the writers and close them: closing publishes every
        queued row as Parquet in one durable round (`MetadataWriter.close`; rows it cannot
        publish go to the journal), so they are not first journaled (an Arrow IPC encode and
        an fsync that the round makes redundant: 0.1-0.16 s of a 2M-packet replay).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        flow_w, dns_w = self._open_writers()
        try:
            self.flush_rows()
        finally:
            flow_w.close()
            dns_w.close()
            if self.bypassed is not None:
                self.bypassed.close()

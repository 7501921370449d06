"""Bidirectional flow table with Zeek conn.log semantics, fed by `PacketBatch`es.

Packets of a batch are grouped by a 64-bit hash of their direction-free 5-tuple (canonical
endpoint order, hash, and grouping as `np.unique` would: C passes that release the GIL); the
live table is a sorted hash array searched with `np.searchsorted`. Every order-free quantity
(packets, IP bytes, payload bytes, first and last time) is a per-group reduction.
Per-connection TCP state (endpoint states, sequence space, history letters) follows the
packets in order in a small C helper (`capture.flow.tcpstate`), which is Zeek's state machine
minus events, timers and reassembly.

Zeek semantics kept: the originator is the first packet's sender, flipped as Zeek does when
the first TCP packet is not a pure SYN (or a UDP packet comes from a likely server port to an
unlikely one), marked `^` in the history; ICMP ports are type and counterpart type (code for
one-way types); TCP bytes are sequence-space sizes (`TCP_Endpoint::Size`); `conn_state`
and `history` as in base/protocols/conn. Differences are listed in
tests/capture/test_capture_zeek_agreement.py.

Flows end on inactivity (TCP 5 min, UDP and others 1 min, as Zeek's defaults; a TCP connection
closed for good 5 s after its last packet, as Zeek's `tcp_close_delay`), on an active
timeout (a long flow is cut into rows), on TCP port reuse (a new SYN on a closed connection),
when the table is full (the least recently active flow is evicted and counted), and at
`flush()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from capture.batch import PacketBatch
from capture.flow import tcpstate
from capture.flow.columns import BatchKeys, Cols, first_ts, keys_of, r_is_reuse
from capture.flow.keys import (
    LS_TCP,
    LS_UDP,
    PROTO_NAMES,
    group_keys,
    make_uid_bytes,
)
from capture.flow.order import stable_argsort
from capture.flow.rows import Columns, rows_for
from capture.flow.slots import DNS_PORT, NS, FlowConfig, FlowCounters, FlowSlots

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
ROW_CHUNK = 8192  # ended flows turned into rows at once (sweeps and flushes)


@dataclass
class Assignment:
    """Which flow each packet of a batch went to (for appmeta and archiving)."""

    pkt: I64  # indices into the batch (decoded packets, inner for tunnels)
    slot: I64  # flow slot per packet
    is_orig: npt.NDArray[np.bool_]
    new_slots: I64  # flows created by this batch (their slots), in creation order


class FlowTable(FlowSlots):
    """Live flows; `add(batch)` returns ended flows as rows, `flush()` ends all."""

    # ---- ingest --------------------------------------------------------------------------
    def add(
        self, batch: PacketBatch, keys: BatchKeys | None = None
    ) -> tuple[Assignment, list[Columns]]:
        """Account a batch. Returns the packet-to-flow assignment and the flows that ended.
        `keys`: the batch's `keys_of(batch)` if already made (on another thread)."""
        k = keys if keys is not None else keys_of(batch)
        cols, h = k.cols, k.h
        ended: list[Columns] = []
        parts: list[tuple[I64, I64, npt.NDArray[np.bool_]]] = []
        self._created = []
        start = 0
        n = cols.ts.size
        if n and self._sweep_due(int(cols.ts[0])):
            self._expire(self._last_sweep, ended)
        row_slots = np.zeros(n, np.int64)
        while start < n:
            groups = k.groups if start == 0 else None  # made for the whole batch
            stop, slots, is_orig = self._process(cols, h, start, n, ended, groups)
            row_slots[start:stop] = slots
            sel = cols.pkt[start:stop] >= 0
            parts.append((cols.pkt[start:stop][sel], slots[sel], is_orig[sel]))
            start = stop
        if n > 1 and (cols.pkt < 0).any():
            self._tunnel_parents(cols, row_slots)
        if parts:
            pkt = np.concatenate([p[0] for p in parts])
            slot = np.concatenate([p[1] for p in parts])
            orig = np.concatenate([p[2] for p in parts])
        else:
            pkt = slot = np.zeros(0, np.int64)
            orig = np.zeros(0, bool)
        over = len(self) - self.cfg.max_flows
        if over > 0:  # the bound holds between batches: evict the least recently active
            live = self._kslot
            self._end(live[np.argsort(self.last_ts[live], kind="stable")[:over]], ended, "evicted")
        self._free.extend(self._freed)
        self._freed.clear()
        created = np.concatenate(self._created) if self._created else np.zeros(0, np.int64)
        return Assignment(pkt, slot, orig, created), ended

    def _process(
        self,
        c: Cols,
        h: npt.NDArray[np.uint64],
        a: int,
        b: int,
        ended: list[Columns],
        groups: tuple[npt.NDArray[np.uint64], I64, I64] | None = None,
    ) -> tuple[int, I64, npt.NDArray[np.bool_]]:
        """Process rows [a, b) up to the first row that must start a new flow; returns
        (stop, slot per row, is_orig per row) for rows [a, stop). `groups`: `group_keys` of
        h[a:b] if already made."""
        hh = h[a:b]
        # np.unique(hh, return_index=..., return_inverse=...)
        uh, first, inv = groups if groups is not None else group_keys(hh)
        slot_u, found = self._lookup(uh)
        ts = c.ts[a:b]
        # inactivity gaps inside the batch (or since the flow's last packet) end a flow
        span = int(ts.max()) - int(ts.min()) if ts.size else 0
        fr, su = a + first, np.maximum(slot_u, 0)
        prev_u = np.where(found, self.last_ts[su], -1)  # each flow's last packet before
        if span <= self._min_timeout_ns:
            # no gap can hide inside the batch: compare first packets with the table only
            # (a found key's timeout is its flow's: the same protocol and ports)
            gap = (prev_u >= 0) & (c.ts[fr] - prev_u > self.timeout[su])
            order = first
        else:  # each row against the one before it in its flow (radix sort: numpy's order)
            pr, sp, dp = c.proto[fr], c.sport[fr], c.dport[fr]  # a new flow's from its first row
            tmo = np.where(found, self.timeout[su], self._timeout_ns(pr, sp, dp))
            order = stable_argsort(inv)
            inv_s, ts_s = inv[order], ts[order]
            prev = np.empty(order.size, np.int64)
            prev[1:] = ts_s[:-1]
            newgrp = np.ones(order.size, bool)
            newgrp[1:] = inv_s[1:] != inv_s[:-1]
            prev[newgrp] = prev_u  # the groups, in order of `inv`
            gap = (prev >= 0) & (ts_s - prev > tmo[inv_s])
        stop = b
        if gap.any():
            stop = a + int(order[gap].min())
            if stop == a:  # the first row itself follows an idle gap: end its flow first
                s = int(slot_u[inv[0]])
                self._end(np.asarray([s]), ended, "idle")
                return self._process(c, h, a, b, ended, groups)
        # new flows for keys first seen in [a, stop)
        new_u = np.flatnonzero(~found & (first < stop - a))
        if new_u.size:
            slot_u[new_u] = self._create(c, a + first[new_u], uh[new_u], ended)
        n = stop - a
        inv = inv[:n]
        slot = slot_u[inv]
        is_orig = self._from_orig(c, a, stop, slot)
        # TCP state in order (C); may stop early at a reused connection
        tcp = (c.proto[a:stop] == 6) & c.count[a:stop]
        tcp_rows = np.flatnonzero(tcp)
        if tcp_rows.size:
            r = self._tcp(c, a, tcp_rows, slot, is_orig)
            n = stop - a if r < 0 else int(tcp_rows[r])  # rows the state machine took
            self._close_timeouts(c, a, n, tcp, slot)
            if r >= 0:
                stop = a + n
                inv, slot, is_orig = inv[:n], slot[:n], is_orig[:n]
        self._count(c, a, stop, slot, is_orig)
        if stop < b and stop > a and int(slot_u[np.searchsorted(uh, h[stop])]) >= 0:
            s = int(slot_u[np.searchsorted(uh, h[stop])])
            self._end(np.asarray([s]), ended, "reuse" if r_is_reuse(c, stop) else "idle")
        elif stop == a:
            s = int(slot_u[np.searchsorted(uh, h[stop])])
            self._end(np.asarray([s]), ended, "reuse")
            return self._process(c, h, a, b, ended, groups)
        return stop, slot, is_orig

    def _create(
        self, c: Cols, rows: I64, hkeys: npt.NDArray[np.uint64], ended: list[Columns]
    ) -> I64:
        k = rows.size
        slots = self._alloc(k)
        fb = tcpstate.ffi.from_buffer
        u8 = np.uint8
        r = tcpstate.lib.flow_create(
            k,
            fb("int64_t[]", np.ascontiguousarray(rows, np.int64)),
            c.ts.size,
            fb("int64_t[]", slots),
            self._cap,
            fb("uint64_t[]", np.ascontiguousarray(hkeys, np.uint64)),
            fb("uint8_t[]", np.ascontiguousarray(c.proto, u8)),
            fb("uint16_t[]", np.ascontiguousarray(c.sport, np.uint16)),
            fb("uint16_t[]", np.ascontiguousarray(c.dport, np.uint16)),
            fb("uint8_t[]", np.ascontiguousarray(c.flags, u8)),
            fb("uint8_t[]", np.ascontiguousarray(c.src, u8)),
            fb("uint8_t[]", np.ascontiguousarray(c.dst, u8)),
            fb("int64_t[]", np.ascontiguousarray(c.ts, np.int64)),
            fb("int32_t[]", np.ascontiguousarray(c.vlan, np.int32)),
            fb("int32_t[]", np.ascontiguousarray(c.inner_vlan, np.int32)),
            fb("uint8_t[]", LS_TCP.view(u8)),
            fb("uint8_t[]", LS_UDP.view(u8)),
            fb("uint8_t[]", DNS_PORT.view(u8)),
            fb("int64_t[]", self._timeouts),
            self._next_serial,
            fb("uint8_t[]", self.orig_h),
            fb("uint8_t[]", self.resp_h),
            fb("uint16_t[]", self.orig_p),
            fb("uint16_t[]", self.resp_p),
            fb("uint8_t[]", self.proto),
            fb("uint8_t[]", self.flipped.view(u8)),
            fb("uint8_t[]", self.orig_lo.view(u8)),
            fb("int64_t[]", self.timeout),
            fb("int64_t[]", self.first_ts),
            fb("int64_t[]", self.last_ts),
            fb("int32_t[]", self.vlan),
            fb("int32_t[]", self.inner_vlan),
            fb("int64_t[]", self.pkts),
            fb("int64_t[]", self.ipb),
            fb("int64_t[]", self.pbytes),
            fb("int8_t[]", self.first_dir),
            fb("uint8_t[]", self.live.view(u8)),
            fb("uint64_t[]", self.hkey),
            fb("int64_t[]", self.serial),
            self.tcp,
        )
        if r < 0:
            raise IndexError("flow_create: a row or slot index is out of range")
        self._next_serial += k
        self.uids.set(slots, make_uid_bytes(self._rng, k))
        had = slots[self.has_parents[slots]]  # a slot's tunnel parents end with its flow
        for s in had.tolist():
            self.parents[s] = None
        self.has_parents[had] = False
        self._index_insert(np.asarray(hkeys, np.uint64), slots)
        self.counters.created += k
        self._created.append(slots)
        return slots

    def _tcp(self, c: Cols, a: int, rows: I64, slot: I64, is_orig: npt.NDArray[np.bool_]) -> int:
        """TCP state of rows `a + rows` in order (one C pass reading the columns in place);
        the index into `rows` of a row that must start a new connection, or -1."""
        fb = tcpstate.ffi.from_buffer
        r = int(
            tcpstate.lib.tcp_process_rows(
                self.tcp,
                self._cap,
                rows.size,
                fb("int64_t[]", np.ascontiguousarray(rows, np.int64)),
                slot.size,
                a,
                c.ts.size,
                fb("int64_t[]", np.ascontiguousarray(slot, np.int64)),
                fb("uint8_t[]", np.ascontiguousarray(is_orig).view(np.uint8)),
                fb("uint8_t[]", np.ascontiguousarray(c.flags, np.uint8)),
                fb("uint32_t[]", np.ascontiguousarray(c.seq, np.uint32)),
                fb("uint32_t[]", np.ascontiguousarray(c.ack, np.uint32)),
                fb("int64_t[]", np.ascontiguousarray(c.plen, np.int64)),
                fb("int64_t[]", np.ascontiguousarray(c.ts, np.int64)),
                int(self.cfg.tcp_close_delay_s * NS),
            )
        )
        if r < -1:
            raise IndexError("tcp_process_rows: a row or slot index is out of range")
        return r

    def _close_timeouts(self, c: Cols, a: int, n: int, tcp: Mask, slot: I64) -> None:
        """Connections closed for good by a FIN or RST among TCP rows (`tcp`) [a, a + n) time out
        `tcp_close_delay_s` after their last packet, as Zeek's `ConnDeleteTimer`."""
        s = slot[np.flatnonzero(tcp[:n] & ((c.flags[a : a + n] & 0x05) != 0))]  # FIN or RST
        s = s[tcpstate.closed(self.tcp, self._cap, s)] if s.size else s
        if s.size:
            self.timeout[s] = np.minimum(self.timeout[s], int(self.cfg.tcp_close_delay_s * NS))

    def _count(self, c: Cols, a: int, stop: int, slot: I64, is_orig: npt.NDArray[np.bool_]) -> None:
        """Add rows [a, stop) to their flows' counters (packets, IP and payload bytes each
        way, last time, first direction): one C pass (`flow_count` in `_flowacct.c`)."""
        n = stop - a
        if n <= 0:
            return
        fb = tcpstate.ffi.from_buffer
        r = tcpstate.lib.flow_count(
            n,
            fb("int64_t[]", np.ascontiguousarray(slot[:n], np.int64)),
            fb("uint8_t[]", np.ascontiguousarray(is_orig[:n]).view(np.uint8)),
            fb("uint8_t[]", np.ascontiguousarray(c.count[a:stop]).view(np.uint8)),
            fb("int64_t[]", np.ascontiguousarray(c.ip_len[a:stop], np.int64)),
            fb("int64_t[]", np.ascontiguousarray(c.plen[a:stop], np.int64)),
            fb("int64_t[]", np.ascontiguousarray(c.ts[a:stop], np.int64)),
            self._cap,
            fb("int64_t[]", self.pkts),
            fb("int64_t[]", self.ipb),
            fb("int64_t[]", self.pbytes),
            fb("int64_t[]", self.last_ts),
            fb("int8_t[]", self.first_dir),
        )
        if r < 0:
            raise IndexError("flow_count: a slot index is out of range")

    # ---- ending flows ---------------------------------------------------------------------
    def _sweep_due(self, ts0: int) -> bool:
        if ts0 - self._last_sweep < NS:  # timeouts are >= 1 s: sweep at most once a second
            return False
        self._last_sweep = ts0
        return True

    def sweep(self, batch: PacketBatch, keys: BatchKeys | None = None) -> Iterator[Columns]:
        """The idle sweep `add(batch)` would make first, made apart: the rows of the flows it
        ends, made ROW_CHUNK flows at a time as they are taken. Take them all before `add`
        (`Pipeline.feed` does): their slots are free for the batch's new flows at once, so a
        mass expiry (a generation of flows idling out) neither grows the table nor holds
        every ended flow's row at once."""
        ts0 = keys.first_ts if keys is not None else first_ts(batch)
        if ts0 is None or not self._sweep_due(ts0):
            return iter(())
        return self.expire_rows(self._last_sweep)

    def expire_rows(self, now: int) -> Iterator[Columns]:
        """`expire(now)`, its rows made ROW_CHUNK flows at a time as they are taken (take
        them all before the next `add`)."""
        done = self._expire(now, None)
        self._free.extend(self._freed)
        self._freed.clear()
        return self._rows_of(done)

    def _rows_of(self, done: list[I64]) -> Iterator[Columns]:
        for slots in done:
            for i in range(0, slots.size, ROW_CHUNK):
                yield rows_for(self, slots[i : i + ROW_CHUNK])

    def expire(self, now: int, ended: list[Columns]) -> None:
        """End flows idle or active too long at `now` (ns); their rows go to `ended`."""
        self._expire(now, ended)
        self._free.extend(self._freed)
        self._freed.clear()

    def _expire(self, now: int, ended: list[Columns] | None) -> list[I64]:
        """End what is due at `now`; rows to `ended`, or none made if None (the ended slots
        are returned, for `_rows_of`)."""
        live = self._kslot
        if live.size == 0:
            return []
        idle = self.last_ts[live] + self.timeout[live] < now
        active = self.first_ts[live] + int(self.cfg.active_timeout_s * NS) < now
        done = []
        if idle.any():
            done.append(self._end(live[idle], ended, "idle"))
        act = active & ~idle
        if act.any():
            done.append(self._end(live[act], ended, "active"))
        return done

    def _end(self, slots: I64, ended: list[Columns] | None, why: str) -> I64:
        """End the live flows among `slots` (returned); their rows go to `ended` now, unless
        it is None (then the caller makes them before any slot is reused)."""
        slots = slots[self.live[slots]]
        if slots.size == 0:
            return slots
        if ended is not None:
            ended.append(rows_for(self, slots))
        c = self.counters
        if why == "idle":
            c.ended_idle += slots.size
        elif why == "active":
            c.ended_active += slots.size
        elif why == "reuse":
            c.ended_reuse += slots.size
        elif why == "evicted":
            c.evicted += slots.size
        else:
            c.ended_flush += slots.size
        self.live[slots] = False
        gone = np.zeros(self._n, bool)  # every slot handed out is below the high-water mark
        gone[slots] = True
        keep = ~gone[self._kslot]
        self._keys = self._keys[keep]
        self._kslot = self._kslot[keep]
        self._freed.extend(slots.tolist())
        return slots

    def flush(self) -> list[Columns]:
        """End every live flow (end of a replay, shutdown)."""
        return list(self.end_all())

    def end_all(self) -> Iterator[Columns]:
        """`flush()`, its rows made ROW_CHUNK flows at a time as they are taken (take them
        all before the next `add`)."""
        if not self._kslot.size:
            return iter(())
        order = np.argsort(self.first_ts[self._kslot], kind="stable")
        done = [self._end(self._kslot[order], None, "flush")]
        self._free.extend(self._freed)
        self._freed.clear()
        return self._rows_of(done)


__all__ = ["NS", "PROTO_NAMES", "Assignment", "FlowConfig", "FlowCounters", "FlowTable"]

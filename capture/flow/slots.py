"""Slot storage of `capture.flow.table.FlowTable`: per-slot arrays, their growth, slot
allocation, the live index (`_lookup`), tunnel parents, and the resource limits and counters.

A flow lives in a slot from its first packet until it ends; a slot is reused from the next
batch on. Per-slot state is numpy arrays (and the C TCP state, `capture.flow.tcpstate`) indexed by
slot. Their storage is reserved once for `reserve_slots(max_flows)` slots on mappings that are
resident only where written (`capture.flow.lazy`), so the table never copies it as it fills;
it grows (copying) only past the reserve. The per-slot lists and object arrays, here and in the
pipeline's companions (`AppFeed`, the archive gate), cover `span` slots, which doubles (by half
from GROW_HALF_FROM slots on) as the slots in use grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.flow import lazy, tcpstate
from capture.flow.columns import Cols
from capture.flow.lazy import grown
from capture.flow.uids import UidBits, UidSlots

I64 = npt.NDArray[np.int64]
NS = 1_000_000_000
INITIAL_SLOTS = 65536  # the first `span`
GROW_HALF_FROM = 1 << 18  # from this many slots on, `span` grows by half, not double
RESERVE_MAX = 1 << 21  # slots reserved at most (about 1 GiB of address space, not memory)
DNS_PORT = np.zeros(65536, bool)  # Zeek's DNS analyzer's UDP ports (a shorter timeout)
DNS_PORT[[53, 137, 5353, 5355]] = True


@dataclass
class FlowConfig:
    """Resource limits and timeouts (Zeek defaults for the timeouts)."""

    max_flows: int = 500_000
    tcp_timeout_s: float = 300.0
    udp_timeout_s: float = 60.0
    other_timeout_s: float = 60.0
    active_timeout_s: float = 3600.0
    dns_timeout_s: float = 10.0  # Zeek's dns_session_timeout (UDP DNS ports)
    tcp_close_delay_s: float = 5.0  # a closed connection's key is reused after this
    seed: int | None = None  # uid generator seed (tests); None = random


def reserve_slots(max_flows: int) -> int:
    """Slots whose storage a table reserves at the start: `max_flows` and a quarter more (the
    slots of flows ended in a batch are reused from the next batch on, so a full table can
    hold more slots than live flows for a batch), at least 1024, at most RESERVE_MAX."""
    return max(1024, min(max_flows + max_flows // 4, RESERVE_MAX))


@dataclass
class FlowCounters:
    """How flows ended, never silently."""

    created: int = 0
    ended_idle: int = 0
    ended_active: int = 0
    ended_reuse: int = 0
    ended_flush: int = 0
    evicted: int = 0  # table full: least recently active flow ended early


class FlowSlots:
    """The storage half of the flow table (see `capture.flow.table.FlowTable`)."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.cfg = config or FlowConfig()
        self.counters = FlowCounters()
        self._rng = UidBits(self.cfg.seed)  # the uids' random bits
        self._keys = np.zeros(0, np.uint64)  # sorted hashes of live flows
        self._kslot = np.zeros(0, np.int64)
        self._free: list[int] = []
        self._freed: list[int] = []  # freed during add(): reusable from the next batch on
        self._created: list[I64] = []
        self._next_serial = 0
        self._last_sweep = -(2**62)
        self._min_timeout_ns = int(
            min(
                self.cfg.tcp_timeout_s,
                self.cfg.udp_timeout_s,
                self.cfg.other_timeout_s,
                self.cfg.dns_timeout_s,
            )
            * NS
        )
        c = self.cfg  # TCP, UDP, other and DNS timeouts in ns, as `_timeout_ns` makes them
        secs = [c.tcp_timeout_s, c.udp_timeout_s, c.other_timeout_s, c.dns_timeout_s]
        self._timeouts = (np.asarray(secs, np.float64) * NS).astype(np.int64)
        self._cap = 0  # slots with storage (the reserve; grows only past it)
        self._span = 0  # slots covered by the per-slot lists and the pipeline's companions
        self._n = 0  # high-water slot count
        self._reserve(reserve_slots(self.cfg.max_flows))
        self._widen(min(INITIAL_SLOTS, self._cap))

    def _reserve(self, slots: int) -> None:
        """Storage for `slots` at once, resident only where written: no copy of every per-slot
        array (and of the C TCP state) as the table fills (at 200k flows open, the copy at
        262,144 slots held both at once, 47 MiB above the peak). Where that much address
        space is refused (strict overcommit, a low RLIMIT_AS), INITIAL_SLOTS, grown as the
        table fills."""
        before = set(self.__dict__)
        try:
            self._grow(slots)
        except (OSError, MemoryError):
            for name in set(self.__dict__) - before:  # what `_grow` made before it failed
                del self.__dict__[name]
            self._grow(min(INITIAL_SLOTS, slots))

    # ---- storage -------------------------------------------------------------------------
    def _grow(self, cap: int) -> None:
        old = self._cap

        g = grown
        s = self.__dict__
        self.first_ts = g(s.get("first_ts"), (cap,), np.int64)
        self.last_ts = g(s.get("last_ts"), (cap,), np.int64)
        self.timeout = g(s.get("timeout"), (cap,), np.int64)  # inactivity timeout, ns
        self.proto = g(s.get("proto"), (cap,), np.uint8)
        self.orig_h = g(s.get("orig_h"), (cap, 16), np.uint8)
        self.resp_h = g(s.get("resp_h"), (cap, 16), np.uint8)
        self.orig_p = g(s.get("orig_p"), (cap,), np.uint16)
        self.resp_p = g(s.get("resp_p"), (cap,), np.uint16)
        self.flipped = g(s.get("flipped"), (cap,), bool)
        self.orig_lo = g(s.get("orig_lo"), (cap,), bool)
        self.live = g(s.get("live"), (cap,), bool)
        self.hkey = g(s.get("hkey"), (cap,), np.uint64)
        self.serial = g(s.get("serial"), (cap,), np.int64)
        self.pkts = g(s.get("pkts"), (cap, 2), np.int64)
        self.ipb = g(s.get("ipb"), (cap, 2), np.int64)
        self.pbytes = g(s.get("pbytes"), (cap, 2), np.int64)
        self.first_dir = g(s.get("first_dir"), (cap,), np.int8)
        self.vlan = g(s.get("vlan"), (cap,), np.int32)  # the first packet's, as Zeek logs
        self.inner_vlan = g(s.get("inner_vlan"), (cap,), np.int32)
        if "uids" not in s:
            self.uids = UidSlots()
        self.uids.grow(cap)
        self.has_parents = g(s.get("has_parents"), (cap,), bool)  # parents[slot] is set
        size = tcpstate.ffi.sizeof("tcpflow")
        tcp = tcpstate.ffi.from_buffer("tcpflow[]", lazy.buffer(size * cap))
        if old:
            tcpstate.ffi.memmove(tcp, s["tcp"], size * old)
        self.tcp: Any = tcp  # keeps its mapping alive
        self._cap = cap

    def _widen(self, span: int) -> None:
        """The per-slot lists cover `span` slots (and the storage, if past the reserve)."""
        if span > self._cap:
            self._grow(span)
        if "parents" not in self.__dict__:
            self.parents: list[list[str] | None] = []
        self.parents.extend([None] * (span - len(self.parents)))
        self._span = span

    def __len__(self) -> int:
        return int(self._keys.size)

    def state_bytes_per_flow(self) -> int:
        """Bytes of table state per flow slot: the per-slot arrays, the C TCP state, the uid
        (its text and list entry), the tunnel-parents entry and the live index's entry.
        A slot's storage is resident once a flow has used it (`capture.flow.lazy`)."""
        cap = self._cap
        arrays = sum(
            a.nbytes // cap
            for k, a in vars(self).items()
            if not k.startswith("_") and isinstance(a, np.ndarray) and a.shape[:1] == (cap,)
        )
        uid = self.uids.nbytes_per_slot
        return arrays + tcpstate.ffi.sizeof("tcpflow") + uid + 8 + 16

    @property
    def capacity(self) -> int:
        """Slots with storage: every slot index handed out is below it."""
        return self._cap

    @property
    def span(self) -> int:
        """Slots the per-slot lists (and the pipeline's companions) must cover: every slot
        index handed out is below it."""
        return self._span

    def _alloc(self, k: int) -> I64:
        """k free slots: the most recently freed first (as popping them one by one), then
        new ones."""
        reuse = min(k, len(self._free))
        cut = len(self._free) - reuse
        out = np.asarray(self._free[cut:][::-1], np.int64)
        del self._free[cut:]
        need = k - reuse
        if need:
            if self._n + need > self._span:
                # by half from GROW_HALF_FROM on: the list and object entries of every slot
                # (tunnel parents, names, principals) are written as the table grows; 8M
                # packets with 200k flows open at once peaked 15 MiB lower
                more = self._span if self._span < GROW_HALF_FROM else self._span // 2
                self._widen(max(self._span + more, self._n + need))
            out = np.concatenate([out, np.arange(self._n, self._n + need, dtype=np.int64)])
            self._n += need
        return out

    def _timeout_ns(
        self, proto: npt.NDArray[np.uint8], p1: npt.NDArray[np.uint16], p2: npt.NDArray[np.uint16]
    ) -> I64:
        c = self.cfg
        t = np.where(
            proto == 6, c.tcp_timeout_s, np.where(proto == 17, c.udp_timeout_s, c.other_timeout_s)
        )
        # Zeek's DNS analyzer ends its UDP sessions after dns_session_timeout
        dns = (proto == 17) & (DNS_PORT[p1.astype(np.intp)] | DNS_PORT[p2.astype(np.intp)])
        t = np.where(dns, c.dns_timeout_s, t)
        return (t * NS).astype(np.int64)

    def _lookup(self, uh: npt.NDArray[np.uint64]) -> tuple[I64, npt.NDArray[np.bool_]]:
        pos = np.searchsorted(self._keys, uh)
        posc = np.minimum(pos, max(self._keys.size - 1, 0))
        found = (
            (self._keys.size > 0) & (self._keys[posc] == uh)
            if self._keys.size
            else (np.zeros(uh.size, bool))
        )
        slot = np.where(found, self._kslot[posc] if self._keys.size else 0, -1)
        return slot.astype(np.int64), np.asarray(found)

    def _index_insert(self, hkeys: npt.NDArray[np.uint64], slots: I64) -> None:
        """Put new flows' keys (absent from the live index) into it, keeping it sorted: both
        arrays in one merge (`np.insert` twice made the positions twice)."""
        if hkeys.size > 1 and not bool((hkeys[1:] > hkeys[:-1]).all()):
            order = np.argsort(hkeys, kind="stable")
            hkeys, slots = hkeys[order], slots[order]
        n, k = self._keys.size, hkeys.size
        at = np.searchsorted(self._keys, hkeys) + np.arange(k)
        old = np.ones(n + k, bool)
        old[at] = False
        keys = np.empty(n + k, np.uint64)
        kslot = np.empty(n + k, np.int64)
        keys[at], kslot[at] = hkeys, slots
        keys[old], kslot[old] = self._keys, self._kslot
        self._keys, self._kslot = keys, kslot

    def _from_orig(self, c: Cols, a: int, stop: int, slot: I64) -> npt.NDArray[np.bool_]:
        """Whether rows [a, stop) (in flows `slot`) come from their flow's originator: the
        sender is the lower endpoint exactly when the originator is (one C pass)."""
        n = stop - a
        out = np.zeros(n, bool)
        if n <= 0:
            return out
        fb = tcpstate.ffi.from_buffer
        r = tcpstate.lib.from_orig(
            n,
            fb("uint8_t[]", np.ascontiguousarray(c.src[a:stop], np.uint8)),
            fb("uint8_t[]", np.ascontiguousarray(c.dst[a:stop], np.uint8)),
            fb("uint16_t[]", np.ascontiguousarray(c.sport[a:stop], np.uint16)),
            fb("uint16_t[]", np.ascontiguousarray(c.dport[a:stop], np.uint16)),
            fb("int64_t[]", np.ascontiguousarray(slot[:n], np.int64)),
            self._cap,
            fb("uint8_t[]", self.orig_lo.view(np.uint8)),
            fb("uint8_t[]", out.view(np.uint8)),
        )
        if r < 0:
            raise IndexError("from_orig: a slot index is out of range")
        return out

    def _tunnel_parents(self, c: Cols, row_slots: I64) -> None:
        """Inner flows of tunnelled packets remember the tunnel connection (Zeek's
        tunnel_parents, the innermost tunnel only): a row right after a tunnel row of its
        packet (outer > middle > inner, see `flowcols.columns`)."""
        inner = np.flatnonzero((c.pkt[:-1] < 0) & (c.bpkt[1:] == c.bpkt[:-1]))
        if inner.size == 0:
            return
        child, parent = row_slots[inner + 1], row_slots[inner]
        self.has_parents[child] = True
        for cs, ps in zip(child.tolist(), parent.tolist(), strict=True):
            have = self.parents[cs]
            pu = self.uids[ps]
            if have is None:
                self.parents[cs] = [pu]
            elif pu not in have and len(have) < 8:
                have.append(pu)


__all__ = ["NS", "FlowConfig", "FlowCounters", "FlowSlots"]

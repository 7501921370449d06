"""Which of a subject's packets reach the archive: each packet decided at its own timestamp,
with the identity lease and the authorisations that hold then, and the flow's TLS server name
for the do-not-decrypt list (DECISIONS.md, "decide" and "The instant `at`").

The answer does not depend on how packets are cut into batches (live capture feeds small ones):

- Held until the name is known. A subject's TCP flow whose decision depends on the server name
  (the do-not-decrypt list is not empty and a covering authorisation does not open it) keeps
  its packets in memory (`capture.subjects.hold`) until the flow shows its name or that it has none
  (`AppFeed.name_settled`: the client's first TLS handshake message reassembled and read, even
  when spread over several segments; a first payload that is not TLS; the parse budget spent),
  until `capture.subjects.hold`'s bound per flow (then it is decided without a name), or until
  the flow ends. Each held packet is then decided at its own instant with that name: archived or
  dropped. Packets lost to the total memory bound are counted and reported as a capture gap.
- Identity and authorisation at the packet's instant, cheaply. Each flow caches its decision
  with the range of instants it holds for: the identity lease window around the instant
  (`IdentityMap.resolve_ip_span`) cut by the boundaries (start, expiry, cancellation) of the
  principal's packets authorisations. A packet outside that range, a new policy snapshot, or a
  changed server name decides again; otherwise a batch costs one numpy comparison, and only
  packets of flows being archived or held go through Python. A flow whose address is held by
  someone with no packets authorisation is settled for the whole lease window in numpy (the
  window comes from the lookup the pipeline makes for the flow row anyway, `seed`).

Limit: a name that appears only after the flow showed its first head (a ClientHello after
STARTTLS) applies from the batch in which it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from appliance.policy.decide import decide
from appliance.policy.model import Channel
from appliance.policy.snapshot import NoIdentity, Snapshot
from capture.app import AppFeed
from capture.batch import PacketBatch
from capture.flow.lazy import grown
from capture.flow.uids import UidLookup
from capture.subjects.hold import Added, Packet
from capture.subjects.instants import NS_MAX, NS_MIN, at_of_ns, ns_of, ns_of_us, ns_of_us_many
from capture.subjects.limits import SubjectLimits
from capture.subjects.recorder import SubjectRecorder

HOLD_GAP_REASON = "packets of a subject's flow dropped while held (hold memory full)"


class ArchiveGate:
    """Per flow slot of one capture source: the cached decision and the hold.

    `ip_of(slot)` gives a flow's internal address ("" if neither end is internal) when the
    pipeline did not already (`set_ips`)."""

    def __init__(
        self,
        recorder: SubjectRecorder,
        ip_of: Callable[[int], str],
        limits: SubjectLimits | None = None,
    ) -> None:
        self.rec = recorder
        self.limits = limits or SubjectLimits()
        self.ip_of = ip_of
        self.decisions = 0  # decide() calls: the cache keeps this near one per flow
        self.reset()

    def reset(self) -> None:
        """A new capture source: no flows."""
        self.hold = self.limits.new_hold()
        self._snap: Snapshot | None = None
        self._snap_has = False  # the snapshot has a packets authorisation
        self._lo = np.zeros(0, np.int64)  # per slot: the cached decision holds in [lo, hi)
        self._hi = np.zeros(0, np.int64)
        self._armed = np.zeros(0, bool)  # per slot: being archived or held
        self._settled = np.zeros(0, bool)  # per slot: the server name is known (or none)
        self._prin: list[str | None] = []
        self._refs: list[tuple[str, ...]] = []
        self._sn: list[str | None] = []  # the server name the cached decision used
        self._matters: list[bool] = []  # a covering authorisation keeps out do-not-decrypt
        self._ip: list[str | None] = []  # internal address, "" none, None not yet known
        self._identity: object = None  # the identity map the lease windows below come from
        self._llo = np.zeros(0, np.int64)  # per slot: lease window [llo, lhi) of `_lp`
        self._lhi = np.zeros(0, np.int64)
        self._lp = np.zeros(0, object)  # per slot: holder of the lease window (or None)
        self._lsub = np.zeros(0, bool)  # per slot: `_lp` has a packets authorisation
        self._subjects: frozenset[str] = frozenset()  # principals with one, in `_snap`
        self._gapped: set[str] = set()  # flows whose hold drops were reported

    def grow(self, cap: int) -> None:
        old = self._lo.size
        if old >= cap:
            return
        more = cap - old
        self._lo = np.concatenate([self._lo, np.full(more, NS_MAX, np.int64)])
        self._hi = np.concatenate([self._hi, np.full(more, NS_MIN, np.int64)])
        self._armed = grown(self._armed, (cap,))
        self._settled = grown(self._settled, (cap,))
        self._prin.extend([None] * more)
        self._refs.extend([()] * more)
        self._sn.extend([None] * more)
        self._matters.extend([False] * more)
        self._ip.extend([None] * more)
        self._llo = np.concatenate([self._llo, np.full(more, NS_MAX, np.int64)])
        self._lhi = np.concatenate([self._lhi, np.full(more, NS_MIN, np.int64)])
        self._lp = np.concatenate([self._lp, np.full(more, None, object)])
        self._lsub = grown(self._lsub, (cap,))

    def state_bytes_per_flow(self) -> int:
        """Bytes per flow slot of the cached decisions and lease windows (list entries and
        object pointers 8 bytes each; held packets are bounded by `capture.subjects.hold`)."""
        arrays = (self._lo, self._hi, self._armed, self._settled, self._llo, self._lhi)
        lists = 5 + 1  # _prin, _refs, _sn, _matters, _ip; _lp (objects)
        return sum(a.itemsize for a in arrays) + self._lsub.itemsize + 8 * lists

    def new_flows(
        self,
        new: npt.NDArray[np.int64],
        tcp: npt.NDArray[np.bool_],
        inside: npt.NDArray[np.bool_],
    ) -> None:
        """Fresh state for new flows: nothing decided; only TCP flows are ever held (the
        names read are TLS over TCP); flows with no internal end have no principal."""
        self._lo[new] = NS_MAX
        self._hi[new] = NS_MIN
        self._llo[new] = np.where(inside, NS_MAX, NS_MIN)  # no internal end: nobody, ever
        self._lhi[new] = np.where(inside, NS_MIN, NS_MAX)
        self._lsub[new] = False
        self._armed[new] = False
        self._settled[new] = ~tcp
        for s, ins in zip(new.tolist(), inside.tolist(), strict=True):
            self._refs[s] = ()
            self._prin[s] = self._sn[s] = None
            self._ip[s] = None if ins else ""

    def set_ips(self, slots: npt.NDArray[np.int64], ips: list[str]) -> None:
        for s, ip in zip(slots.tolist(), ips, strict=True):
            self._ip[s] = ip

    def seed(
        self,
        snap: Snapshot,
        slots: npt.NDArray[np.int64],
        hits: dict[int, tuple[str | None, int, int]],
    ) -> None:
        """The lease windows of new flows with an internal end (`slots`), from the lookup the
        pipeline makes for the flow rows (`IdentityMap.resolve_packed_spans`: index into
        `slots` -> holder at the flow's first packet and the window around it, microseconds),
        so the identity map is asked once per flow, not twice. Flows without a hit are held
        by nobody at any instant: settled in numpy, no Python per flow."""
        self._note_snapshot(snap)
        self._lp[slots] = None
        self._llo[slots] = NS_MIN
        self._lhi[slots] = NS_MAX
        self._lsub[slots] = False
        if not hits:
            return
        idx = np.fromiter(hits, np.int64, len(hits))
        got = list(hits.values())
        hs = slots[idx]
        prin = [g[0] for g in got]
        self._lp[hs] = np.array(prin, object)
        self._lsub[hs] = np.fromiter((p in self._subjects for p in prin), bool, len(prin))
        self._llo[hs] = ns_of_us_many([g[1] for g in got])
        self._lhi[hs] = ns_of_us_many([g[2] for g in got])

    def _note_snapshot(self, snap: Snapshot) -> None:
        """A new policy snapshot: every flow decides again at its next packet."""
        if snap is self._snap:
            return
        self._snap = snap
        if snap.identity is not self._identity:  # another identity load: windows are stale
            self._identity = snap.identity
            self._llo[:] = NS_MAX
            self._lhi[:] = NS_MIN
        subjects = frozenset(
            a.subject for a in snap.authorisations if Channel.PACKETS in a.channels
        )
        if subjects != self._subjects:
            self._subjects = subjects
            self._lsub = np.fromiter((p in subjects for p in self._lp), bool, len(self._lp))
        self._snap_has = bool(subjects)
        self._lo[:] = NS_MAX
        self._hi[:] = NS_MIN
        if not self._snap_has:  # nobody is covered now: held packets are dropped
            self.hold.clear()
            for uid in list(self.rec.flows):
                self.rec.not_covered(uid)  # what was gathered is written
            self._armed[:] = False

    # ---- per batch -----------------------------------------------------------------------
    def feed(
        self,
        snap: Snapshot,
        b: PacketBatch,
        pkt: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        uids: UidLookup,
        appf: AppFeed,
    ) -> None:
        """Decide the batch's packets (`pkt`, in flow `slot`) after `appf` has seen them."""
        self._note_snapshot(snap)
        if not self._snap_has:
            return
        if pkt.size == 0:
            return
        ts = b.ts_ns[pkt]
        stale = (ts < self._lo[slot]) | (ts >= self._hi[slot])
        armed = self._armed[slot]
        if not (stale | armed).any():
            return
        # Stale packets of flows not being archived whose address is held by someone with no
        # packets authorisation: not covered for the whole lease window, without Python.
        quiet = stale & ~armed & ~self._lsub[slot]
        quiet &= (ts >= self._llo[slot]) & (ts < self._lhi[slot])
        if quiet.any():
            qs = np.unique(slot[quiet])
            self._lo[qs] = self._llo[qs]
            self._hi[qs] = self._lhi[qs]
        # Flows not being archived: decide again only at their packets outside the cached
        # range (one round per boundary crossed in this batch). A flow found covered, or
        # already being archived or held, goes packet by packet from there on.
        n = pkt.size
        us, inv = np.unique(slot, return_inverse=True)
        start = np.where(self._armed[us], 0, n)  # per flow: first packet taken one by one
        after = np.full(us.size, -1)  # per flow: decided up to this packet
        idx = np.arange(n)
        while True:
            stale = (ts < self._lo[slot]) | (ts >= self._hi[slot])
            todo = np.flatnonzero(stale & (start[inv] == n) & (idx > after[inv]))
            if todo.size == 0:
                break
            u_of, first = np.unique(inv[todo], return_index=True)
            for u, j in zip(u_of.tolist(), todo[first].tolist(), strict=True):
                s = int(us[u])
                if self._recheck(snap, s, uids[s], int(ts[j]), appf):
                    start[u] = j
                else:
                    after[u] = j
        cand = np.flatnonzero(idx >= start[inv])
        for p, s in zip(pkt[cand].tolist(), slot[cand].tolist(), strict=True):
            self._packet(snap, s, uids[s], b, p, appf)

    def _recheck(self, snap: Snapshot, s: int, uid: str, t: int, appf: AppFeed) -> bool:
        """Decide a flow not being archived at `t`; True if it is covered now."""
        settled = bool(self._settled[s])
        if not settled and appf.name_settled(s, uid):
            settled = True
            self._settled[s] = True
        refs = self._refs_at(snap, s, t, appf.server_name(s, uid) if settled else None)
        if not refs:
            self.rec.not_covered(uid)
        return bool(refs)

    def _packet(
        self, snap: Snapshot, s: int, uid: str, b: PacketBatch, p: int, appf: AppFeed
    ) -> None:
        t = int(b.ts_ns[p])
        settled = bool(self._settled[s])
        if not settled and appf.name_settled(s, uid):
            settled = True
            self._settled[s] = True
        sn = appf.server_name(s, uid) if settled else None
        refs = self._refs_at(snap, s, t, sn)
        if not settled and refs and self._matters[s]:
            packet = (t, int(b.linktype[p]), b.frame(p), int(b.wire_len[p]))
            added = self.hold.add(uid, packet)
            if added is not Added.FLOW_FULL:
                self._armed[s] = True  # the flow's next packets are held (or dropped) too
                if added is Added.DROPPED:
                    self._report_drop(uid, refs)
                return
            # the flow showed no name within the hold's bound: decide it without one
            self._settled[s] = True
            sn = appf.server_name(s, uid)
            refs = self._refs_at(snap, s, t, sn)
            self._release(snap, s, uid, sn)
            self._archive(s, uid, refs, packet)
            return
        if settled and uid in self.hold:  # unsettled, held packets wait for the name
            self._release(snap, s, uid, sn)
        if refs:
            self._archive(s, uid, refs, (t, int(b.linktype[p]), b.frame(p), int(b.wire_len[p])))
        else:
            self._archive(s, uid, refs, None)

    def _archive(self, s: int, uid: str, refs: tuple[str, ...], packet: Packet | None) -> None:
        if refs and packet is not None:
            principal = self._prin[s]
            assert principal is not None
            t, linktype, frame, wire_len = packet
            self.rec.packet(uid, principal, refs, at_of_ns(t), linktype, t, frame, wire_len)
            self._armed[s] = True
        else:
            self.rec.not_covered(uid)  # what was gathered before this instant is written
            self._armed[s] = uid in self.hold

    def _release(self, snap: Snapshot, s: int, uid: str, sn: str | None) -> None:
        """Decide the flow's held packets, each at its own instant, with server name `sn`."""
        held = self.hold.take(uid)
        if held is None:
            return
        for packet in held.packets:
            self._archive(s, uid, self._refs_at(snap, s, packet[0], sn), packet)

    def _report_drop(self, uid: str, refs: tuple[str, ...]) -> None:
        if uid not in self._gapped:
            self._gapped.add(uid)
            for ref in refs:
                self.rec.gap(ref, HOLD_GAP_REASON)

    def end_flows(self, uids: Sequence[str], slots: npt.NDArray[np.int64], appf: AppFeed) -> None:
        """The flows ended (before `appf` forgets them): held packets are decided now."""
        if not self.hold.flows and not self._gapped:
            return
        for uid, s in zip(uids, slots.tolist(), strict=True):
            self._gapped.discard(uid)
            if uid in self.hold:
                snap = self._snap
                if snap is None or not self._snap_has:
                    self.hold.take(uid)
                else:
                    self._release(snap, s, uid, appf.server_name(s, uid))

    # ---- the cached decision --------------------------------------------------------------
    def _refs_at(self, snap: Snapshot, s: int, t: int, sn: str | None) -> tuple[str, ...]:
        if self._lo[s] <= t < self._hi[s] and self._sn[s] == sn:
            return self._refs[s]
        self._decide(snap, s, t, sn)
        return self._refs[s]

    def _decide(self, snap: Snapshot, s: int, t: int, sn: str | None) -> None:
        """Decide for slot `s` at `t` (ns) and cache it with the range of instants it holds
        for: the lease window, cut by the authorisations' start, expiry and cancellation."""
        self.decisions += 1
        principal: str | None = None
        lo, hi = NS_MIN, NS_MAX
        at = at_of_ns(t)
        ip = self._ip[s]
        if ip is None and not isinstance(snap.identity, NoIdentity):
            ip = self._ip[s] = self.ip_of(s)
        if ip and not isinstance(snap.identity, NoIdentity):
            span = getattr(snap.identity, "resolve_ip_span", None)
            if self._llo[s] <= t < self._lhi[s]:  # inside the lease window known
                principal, lo, hi = self._lp[s], int(self._llo[s]), int(self._lhi[s])
            elif span is not None:
                principal, lo_us, hi_us = span(ip, at)
                lo, hi = ns_of_us(lo_us), ns_of_us(hi_us)
                self._lp[s], self._llo[s], self._lhi[s] = principal, lo, hi
                self._lsub[s] = principal in self._subjects
            else:  # a resolver without windows: this microsecond only
                principal = snap.resolve(ip=ip, at=at)
                lo = t // 1000 * 1000
                hi = lo + 1000
        refs: tuple[str, ...] = ()
        matters = False
        auths = (
            [a for a in snap.for_subject(principal) if Channel.PACKETS in a.channels]
            if principal is not None
            else []
        )
        if auths:
            for a in auths:
                edges: tuple[datetime | None, ...]
                try:
                    edges = (a.start, a.expiry, a.cancelled_at)
                except ValueError:  # no expiry on record: decide() refuses it the same way
                    edges = (a.start, None, a.cancelled_at)
                for edge in edges:
                    if edge is not None:
                        e = ns_of(edge)
                        if e <= t:
                            lo = max(lo, e)
                        else:
                            hi = min(hi, e)
            refs = decide(snap, principal, Channel.PACKETS, at, server_name=sn).refs
            if refs and snap.do_not_decrypt:
                matters = any(not a.open_do_not_decrypt for a in auths if a.ref in refs)
        self._lo[s], self._hi[s] = lo, hi
        self._prin[s], self._refs[s], self._sn[s], self._matters[s] = principal, refs, sn, matters

"""A subject's packets held back until their flow shows its TLS server name
(`capture.subjects.gate`).

Bounded: at most `HOLD_MAX_PACKETS` packets and `HOLD_MAX_BYTES` bytes per flow (the caller
then decides without a name, as for a flow that has none) and `HOLD_TOTAL_BYTES` over all flows
(past it a packet is dropped and counted: never archived on a guess). Held packets are a
subject's, in memory only; nothing here is written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

HOLD_MAX_PACKETS = 64
HOLD_MAX_BYTES = 1 << 20
HOLD_TOTAL_BYTES = 32 << 20

# one held packet: (timestamp ns, link type, frame, original length)
Packet = tuple[int, int, bytes, int]


class Added(Enum):
    HELD = "held"
    FLOW_FULL = "flow_full"  # the flow's bound: not held, decide the flow now
    DROPPED = "dropped"  # the total bound: the packet is lost (counted)


@dataclass
class Held:
    packets: list[Packet] = field(default_factory=list)
    nbytes: int = 0
    dropped: int = 0


class Hold:
    """Held packets by flow uid, with the bounds above."""

    def __init__(
        self,
        *,
        max_packets: int | None = None,
        max_bytes: int | None = None,
        total_bytes: int | None = None,
    ) -> None:
        """Bounds default to the module's constants as they are at construction."""
        self.max_packets = HOLD_MAX_PACKETS if max_packets is None else max_packets
        self.max_bytes = HOLD_MAX_BYTES if max_bytes is None else max_bytes
        self.total_bytes = HOLD_TOTAL_BYTES if total_bytes is None else total_bytes
        self.flows: dict[str, Held] = {}
        self.nbytes = 0
        self.dropped = 0  # packets lost because the total bound was reached

    def __contains__(self, uid: str) -> bool:
        return uid in self.flows

    def add(self, uid: str, packet: Packet) -> Added:
        size = len(packet[2])
        held = self.flows.get(uid)
        have_n, have_b = (len(held.packets), held.nbytes) if held is not None else (0, 0)
        if have_n >= self.max_packets or have_b + size > self.max_bytes:
            return Added.FLOW_FULL
        if self.nbytes + size > self.total_bytes:
            self.dropped += 1
            if held is None:
                held = self.flows[uid] = Held()
            held.dropped += 1
            return Added.DROPPED
        if held is None:
            held = self.flows[uid] = Held()
        held.packets.append(packet)
        held.nbytes += size
        self.nbytes += size
        return Added.HELD

    def take(self, uid: str) -> Held | None:
        """The flow's held packets (in arrival order), no longer held."""
        held = self.flows.pop(uid, None)
        if held is not None:
            self.nbytes -= held.nbytes
        return held

    def clear(self) -> None:
        self.flows.clear()
        self.nbytes = 0

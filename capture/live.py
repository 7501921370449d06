"""Live capture from a network interface into the packet pipeline.

An AF_PACKET raw socket (all protocols, promiscuous membership) with a TPACKET_V3 ring
(`capture.read.ring`): each block the kernel fills is one batch, with the kernel's timestamps,
decoded
and fed to the same `Pipeline` replay uses; kernel drops are counted. Without the ring (old
kernel, or LBM_CAPTURE_NO_RING=1) frames are read one by one until `batch_packets` arrive or
`batch_seconds` pass. About
once a second idle flows are ended and `on_tick` runs (the archive closes due segments there).

SIGTERM and SIGINT stop the loop: the pending batch is fed, every live flow becomes a row, and
`run_live` returns the summary (the caller flushes and closes the writers). Readiness: once the
socket is bound, `run/capture-IF.ready` holds the pid (removed on exit) and systemd is told
READY=1 when NOTIFY_SOCKET is set.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from capture import CaptureError
from capture.batch import LINKTYPE_ETHERNET, LINKTYPE_RAW, RawBatch
from capture.decode import Decoder
from capture.pipeline import Pipeline
from capture.read import PacketRing, ring_disabled
from capture.summary import Summary
from store.readiness import announce_ready

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_TIMESTAMPNS = 35
SNAPLEN = 65535
ARPHRD_LOOPBACK = 772  # loopback shows every packet twice: outgoing copies are skipped
PACKET_OUTGOING = 4
ARPHRD_TO_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}


def open_socket(interface: str) -> socket.socket:
    """A bound AF_PACKET socket on `interface` (CaptureError naming it on failure)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except (PermissionError, OSError) as exc:
        raise CaptureError(
            f"{interface}: cannot open a packet socket ({exc.strerror}); capture needs CAP_NET_RAW"
        ) from None
    try:
        sock.bind((interface, 0))
        ifindex = socket.if_nametoindex(interface)
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    except OSError as exc:
        sock.close()
        raise CaptureError(f"{interface}: cannot capture ({exc.strerror or exc})") from None
    sock.setblocking(False)
    return sock


def open_ring(sock: socket.socket, interface: str) -> PacketRing | None:
    """The socket's TPACKET_V3 ring, or None (disabled, or an older kernel: the socket is then
    read one packet at a time)."""
    if ring_disabled():
        return None
    hatype = sock.getsockname()[3]
    try:
        return PacketRing(
            sock,
            interface,
            ARPHRD_TO_LINKTYPE.get(hatype, LINKTYPE_ETHERNET),
            skip_outgoing=hatype == ARPHRD_LOOPBACK,
        )
    except CaptureError:
        return None


class LiveCapture:
    """Reads batches from one interface; `stop()` (or a signal) ends `run()`."""

    def __init__(
        self,
        interface: str,
        pipeline: Pipeline,
        *,
        batch_packets: int = 4096,
        batch_seconds: float = 0.2,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.interface = interface
        self.pipeline = pipeline
        self.batch_packets = batch_packets
        self.batch_seconds = batch_seconds
        self.on_tick = on_tick
        self.decoder = Decoder()
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def _drain(
        self,
        sock: socket.socket,
        frames: list[bytes],
        ts: list[int],
        wire: list[int],
        lt: list[int],
    ) -> None:
        while len(frames) < self.batch_packets:
            try:
                data, anc, flags, addr = sock.recvmsg(SNAPLEN, 64, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            if addr[3] == ARPHRD_LOOPBACK and addr[2] == PACKET_OUTGOING:
                continue
            stamp = time.time_ns()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec * 1_000_000_000 + nsec
            wire_len = len(data)
            if flags & socket.MSG_TRUNC:
                wire_len = max(wire_len, SNAPLEN + 1)
            frames.append(data)
            ts.append(stamp)
            wire.append(wire_len)
            lt.append(ARPHRD_TO_LINKTYPE.get(addr[3], LINKTYPE_ETHERNET))

    def _feed_ring(self, ring: PacketRing) -> None:
        for raw in ring.drain():
            self.pipeline.feed(self.decoder.decode(raw))

    def run(self, sock: socket.socket, ring: PacketRing | None = None) -> Summary:
        """Capture until `stop()`: from `ring` when given, else reading `sock` packet by packet."""
        self.pipeline.summary.live_reader = "tpacket_v3" if ring is not None else "socket"
        if ring is not None:
            return self._run_ring(sock, ring)
        return self._run_socket(sock)

    def _run_ring(self, sock: socket.socket, ring: PacketRing) -> Summary:
        last_tick = time.monotonic()
        while not self._stop:
            with contextlib.suppress(InterruptedError):
                select.select([sock], [], [], self.batch_seconds)
            self._feed_ring(ring)
            now = time.monotonic()
            if now - last_tick >= 1.0:
                self._tick(ring)
                last_tick = now
        self._feed_ring(ring)
        self._tick(ring)
        return self._finish()

    def _tick(self, ring: PacketRing | None = None) -> None:
        if ring is not None:
            dropped = ring.drops()
            if dropped:
                self.pipeline.summary.add_bad({"reader_kernel_drop": dropped})
        self.pipeline.tick()
        if self.on_tick is not None:
            self.on_tick()

    def _finish(self) -> Summary:
        self.pipeline.summary.add_bad(self.decoder.summary)
        self.pipeline.end_source()
        if self.on_tick is not None:
            self.on_tick()
        return self.pipeline.summary

    def _run_socket(self, sock: socket.socket) -> Summary:
        frames: list[bytes] = []
        ts: list[int] = []
        wire: list[int] = []
        lt: list[int] = []
        started = time.monotonic()
        last_tick = started
        while True:
            if not self._stop:
                with contextlib.suppress(InterruptedError):
                    select.select([sock], [], [], self.batch_seconds)
                self._drain(sock, frames, ts, wire, lt)
            now = time.monotonic()
            if frames and (
                self._stop
                or len(frames) >= self.batch_packets
                or now - started >= self.batch_seconds
            ):
                raw = RawBatch.from_frames(frames, ts, lt, wire)
                self.pipeline.feed(self.decoder.decode(raw))
                frames, ts, wire, lt = [], [], [], []
                started = now
            if now - last_tick >= 1.0:
                self._tick()
                last_tick = now
            if self._stop:
                break
        return self._finish()


def run_live(
    interface: str,
    pipeline: Pipeline,
    *,
    run_dir: Path,
    on_tick: Callable[[], object] | None = None,
) -> Summary:
    """Capture until SIGTERM/SIGINT; returns the summary once every flow is a row."""
    sock = open_socket(interface)
    ring = open_ring(sock, interface)  # before readiness: no packet may miss it
    live = LiveCapture(interface, pipeline, on_tick=on_tick)
    old: dict[int, object] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        live.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ready = announce_ready(run_dir, f"capture-{interface}")
    try:
        return live.run(sock, ring)
    finally:
        if ring is not None:
            ring.close()
        sock.close()
        ready.unlink(missing_ok=True)
        for signum, h in old.items():
            signal.signal(signum, h)  # type: ignore[arg-type]

"""Captures for bench/bench_capture.py: a synthetic mix, the bench corpus looped, slices.

The synthetic capture is a realistic egress mix (issue 18): about 85% of packets TCP, 15% IPv6,
half the TCP flows TLS with a ClientHello carrying SNI (the rest HTTP or other TCP), DNS queries
and answers, other UDP (call-like media); TCP sessions have handshakes, bulk data with delayed
ACKs, and FIN teardown; frames from bare ACKs to full 1514-byte frames. `concurrent` flows are
open at once: that many slots each run flows back to back, packets merged in time order, and the
file stops at `packets` packets (cutting the flows still open, as a capture window does).
Generation is deterministic for (packets, flows, concurrent, seed) and cached under
/tmp/lbm-bench-capture/ (keyed by those and the generator version), with a count of the mix.

Nothing here imports the appliance (bench/capture_corpus.py reads pcap records itself).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
from capture_corpus import corpus_files, count_mix, write_corpus_loop

GEN_VERSION = 4  # bump when the generator's output changes: cached files are keyed by it
CACHE = Path(os.environ.get("LBM_BENCH_CACHE", "/tmp/lbm-bench-capture"))
ROOT = Path(__file__).resolve().parents[1]
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
ETH4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
ETH6 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"
BASE_US = 1_700_000_000 * 1_000_000
MEAN_FLOW_PACKETS = 41.0  # the mix below at scale 1.0
BULK = bytes(1448)


def client_hello(sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    exts = sni_ext + struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x13\x02"
        b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def server_hello() -> bytes:
    exts = struct.pack("!HHH", 43, 2, 0x0304)
    body = b"\x03\x03" + bytes(32) + b"\x00\x13\x01\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


SERVER_HELLO = server_hello()


class Endpoints:
    """Frame builder for one flow: addresses fixed, both directions."""

    __slots__ = ("c2s", "s2c", "v6")

    def __init__(self, i: int, v6: bool, proto: int) -> None:
        self.v6 = v6
        if v6:
            c = b"\xfd\x00" + bytes(9) + i.to_bytes(5, "big")
            s = b"\x20\x01\x0d\xb8" + bytes(8) + (i % 4096).to_bytes(4, "big")
            p = struct.pack("!BB", proto, 64)
        else:
            c = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255])
            s = bytes([198, 18 + ((i >> 20) & 1), (i >> 8) & 15, i & 255])
            p = struct.pack("!HHBBH", 0, 0x4000, 64, proto, 0)
        self.c2s = p + c + s
        self.s2c = p + s + c

    def frame(self, to_server: bool, l4: bytes) -> bytes:
        rest = self.c2s if to_server else self.s2c
        if self.v6:
            return ETH6 + b"\x60\x00\x00\x00" + struct.pack("!H", len(l4)) + rest + l4
        return ETH4 + b"\x45\x00" + struct.pack("!H", 20 + len(l4)) + rest + l4


def tcp_hdr(sp: int, dp: int, fl: int, seq: int, ack: int) -> bytes:
    return struct.pack(
        "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, fl, 65535, 0, 0
    )


def flow_frames(i: int, rng: random.Random, scale: float) -> Iterator[bytes]:
    """One flow's frames in order. Kinds by flow: 70% TCP (half of them TLS), 18% DNS, 12%
    other UDP; 15% of flows IPv6. `scale` stretches the data phase (mean packets per flow)."""
    v6 = rng.random() < 0.15
    k = rng.random()
    sp = 1024 + rng.randrange(64000)
    if k < 0.70:  # TCP
        e = Endpoints(i, v6, 6)
        tls = k < 0.35
        dp = 443 if tls else (80 if k < 0.55 else 8000 + i % 50)
        cs, ss = rng.randrange(1 << 32), rng.randrange(1 << 32)
        yield e.frame(True, tcp_hdr(sp, dp, 0x02, cs, 0))
        yield e.frame(False, tcp_hdr(dp, sp, 0x12, ss, cs + 1))
        yield e.frame(True, tcp_hdr(sp, dp, 0x10, cs + 1, ss + 1))
        if tls:
            req = client_hello(f"host{i % 5000}.example.com")
        elif dp == 80:
            req = f"GET /x HTTP/1.1\r\nHost: web{i % 3000}.example.org\r\n\r\n".encode()
        else:
            req = BULK[: rng.randrange(40, 400)]
        yield e.frame(True, tcp_hdr(sp, dp, 0x18, cs + 1, ss + 1) + req)
        cseq, sseq = cs + 1 + len(req), ss + 1
        if tls:
            yield e.frame(False, tcp_hdr(dp, sp, 0x18, sseq, cseq) + SERVER_HELLO)
            sseq += len(SERVER_HELLO)
        lo = max(1, int(12 * scale))
        for _ in range(rng.randrange(lo, lo + max(1, int(30 * scale)))):
            n = 1448 if rng.random() < 0.3 else rng.randrange(60, 700)
            yield e.frame(False, tcp_hdr(dp, sp, 0x18, sseq, cseq) + BULK[:n])
            sseq += n
            if rng.random() < 0.6:  # delayed ACKs: bare ACKs are a large part of a real mix
                yield e.frame(True, tcp_hdr(sp, dp, 0x10, cseq, sseq))
        yield e.frame(True, tcp_hdr(sp, dp, 0x11, cseq, sseq))
        yield e.frame(False, tcp_hdr(dp, sp, 0x11, sseq, cseq + 1))
        yield e.frame(True, tcp_hdr(sp, dp, 0x10, cseq + 1, sseq + 1))
    elif k < 0.88:  # DNS
        e = Endpoints(i, v6, 17)
        name = f"n{i % 7000}.example.net"
        q = dpkt.dns.DNS(id=i & 0xFFFF, qd=[dpkt.dns.DNS.Q(name=name, type=1)])
        qb = bytes(q)
        yield e.frame(True, struct.pack("!HHHH", sp, 53, 8 + len(qb), 0) + qb)
        an = dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=300, rdata=bytes([192, 0, 2, 1]))
        rb = bytes(dpkt.dns.DNS(id=i & 0xFFFF, op=0x8180, qd=q.qd, an=[an]))
        yield e.frame(False, struct.pack("!HHHH", 53, sp, 8 + len(rb), 0) + rb)
    else:  # other UDP: call-like media both ways
        e = Endpoints(i, v6, 17)
        dp = 20000 + i % 100
        lo = max(1, int(20 * scale))
        for _ in range(rng.randrange(lo, lo + max(1, int(56 * scale)))):
            n = rng.randrange(120, 400)
            up = rng.random() < 0.5
            a, b = (sp, dp) if up else (dp, sp)
            yield e.frame(up, struct.pack("!HHHH", a, b, 8 + n, 0) + BULK[:n])


def write_synthetic(path: Path, packets: int, flows: int, concurrent: int, seed: int) -> int:
    """Write the synthetic pcap; returns the number of flows started."""
    rng = random.Random(seed)
    # the file cuts about `concurrent` flows, half done on average: they count as flows too
    whole = flows - concurrent // 2 if flows > concurrent else flows
    scale = max(0.05, (packets / max(1, whole)) / MEAN_FLOW_PACKETS)
    rate = max(100_000, concurrent)  # packets/s overall: a flow's mean gap = concurrent / rate
    gap_us = concurrent / rate * 1e6
    heap: list[tuple[int, int, Iterator[bytes]]] = []
    started = 0
    for slot in range(concurrent):
        heap.append(
            (BASE_US + int(rng.random() * 3 * gap_us), slot, flow_frames(started, rng, scale))
        )
        started += 1
    heapq.heapify(heap)
    pack = struct.Struct("<IIII").pack
    written = 0
    with path.open("wb") as fh:
        fh.write(PCAP_HEADER)
        parts: list[bytes] = []
        while written < packets:
            t, slot, it = heap[0]
            f = next(it, None)
            if f is None:  # this slot's flow ended: the next one starts a moment later
                it = flow_frames(started, rng, scale)
                started += 1
                heapq.heapreplace(heap, (t + 1 + int(rng.random() * gap_us), slot, it))
                continue
            parts.append(pack(t // 1_000_000, t % 1_000_000, len(f), len(f)))
            parts.append(f)
            written += 1
            heapq.heapreplace(heap, (t + 1 + int(gap_us * (0.5 + rng.random())), slot, it))
            if len(parts) >= 40_000:
                fh.write(b"".join(parts))
                parts.clear()
        fh.write(b"".join(parts))
    return started


def write_slice(src: Path, dst: Path, n: int) -> int:
    """The first `n` records of a pcap (written by this module: little-endian microseconds)."""
    got = 0
    with src.open("rb") as fi, dst.open("wb") as fo:
        fo.write(fi.read(24))
        rec = struct.Struct("<IIII")
        parts: list[bytes] = []
        while got < n:
            h = fi.read(16)
            if len(h) < 16:
                break
            parts.append(h + fi.read(rec.unpack(h)[2]))
            got += 1
            if len(parts) >= 50_000:
                fo.write(b"".join(parts))
                parts.clear()
        fo.write(b"".join(parts))
    return got


def cached(name: str, make: Any, count: bool = True) -> tuple[Path, dict[str, Any]]:
    """`CACHE/name` made by `make(tmp_path)` once (atomic rename), with its mix count beside it
    (unless not `count`). Files of other generator versions are removed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("*-v*"):
        if old.name.startswith(("synth-v", "one-v")) and f"-v{GEN_VERSION}-" not in old.name:
            old.unlink(missing_ok=True)  # a reader of it keeps its open file
    path = CACHE / name
    meta = path.with_suffix(".mix.json")
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs at once must not mix
        make(tmp)
        tmp.replace(path)
        meta.unlink(missing_ok=True)
    if not count:
        return path, {}
    if not meta.exists():
        meta.write_text(json.dumps(count_mix(path)))
    return path, dict(json.loads(meta.read_text()))


def synthetic(packets: int, flows: int, concurrent: int, seed: int) -> tuple[Path, dict[str, Any]]:
    name = f"synth-v{GEN_VERSION}-p{packets}-f{flows}-c{concurrent}-s{seed}.pcap"
    return cached(name, lambda p: write_synthetic(p, packets, flows, concurrent, seed))


def corpus_loop(min_packets: int) -> tuple[Path, dict[str, Any]]:
    stamp = "-".join(f"{f.name}:{f.stat().st_size}" for f in corpus_files())
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return cached(f"corpus-{key}-p{min_packets}.pcap", lambda p: write_corpus_loop(p, min_packets))


def prefix(src: Path, n: int) -> Path:
    """The first `n` packets of `src` (`src` itself if it has no more)."""
    meta = src.with_suffix(".mix.json")
    if meta.exists() and json.loads(meta.read_text())["packets"] <= n:
        return src
    return cached(f"{src.stem}-first{n}.pcap", lambda p: write_slice(src, p, n), count=False)[0]


def one_packet() -> Path:
    path = CACHE / f"one-v{GEN_VERSION}-.pcap"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        f = next(flow_frames(1, random.Random(1), 1.0))
        path.write_bytes(
            PCAP_HEADER + struct.pack("<IIII", BASE_US // 1_000_000, 0, len(f), len(f)) + f
        )
    return path


def generate(
    path: Path, packets: int, flows: int, seed: int = 1, concurrent: int = 1500
) -> tuple[int, int]:
    """Compatibility entry (other scripts call `bench_capture.generate`): write the synthetic
    capture to `path`; returns (packets, bytes)."""
    write_synthetic(path, packets, flows, concurrent, seed)
    return packets, path.stat().st_size


def main() -> None:
    """`python bench/capture_gen.py --packets N --flows F --concurrent C`: make (or find) the
    cached synthetic capture and print its path and mix, e.g. for profiling by hand."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--concurrent", type=int, default=1_500)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if min(a.packets, a.flows, a.concurrent) < 1:
        ap.error("--packets, --flows and --concurrent must be at least 1")
    path, mix = synthetic(a.packets, a.flows, a.concurrent, a.seed)
    from capture_corpus import mix_line

    print(path)
    print(mix_line(mix))


if __name__ == "__main__":
    main()

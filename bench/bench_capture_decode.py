"""Benchmark: read + batch-decode packets/s vs a plain dpkt per-packet loop, same run.

Generates a synthetic pcap (default 2,000,000 packets over 50,000 flows; Ethernet, IPv4 and
IPv6, TCP and UDP, a realistic size mix with many bare ACKs) with numpy-written records,
then measures:
- read only (capture.read.reader: record walking in bounded chunks),
- read + decode (capture.decode.decoder.read_batches),
- decode alone (batches already in memory),
- dpkt: dpkt.pcap.Reader + Ethernet/IP/TCP|UDP decode and 5-tuple access, per packet, on a
  200,000-packet slice of the same file,
and prints packets/s and the ratio against dpkt.

    .venv/bin/python bench/bench_capture_decode.py [--packets N] [--keep FILE]
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from pathlib import Path

import dpkt
import numpy as np

from capture.decode.decoder import Decoder, read_batches
from capture.read.reader import open_capture
from capture.read.walk import IMPLEMENTATION

CHUNK = 250_000


def _put16(arr: np.ndarray, off: np.ndarray, val: np.ndarray) -> None:
    arr[off] = (val >> 8) & 0xFF
    arr[off + 1] = val & 0xFF


def _put32(arr: np.ndarray, off: np.ndarray, val: np.ndarray) -> None:
    for k in range(4):
        arr[off + k] = (val >> (24 - 8 * k)) & 0xFF


def synth_chunk(rng: np.random.Generator, n: int, t0_us: int, flows: int) -> bytes:
    """n pcap records (header + Ethernet frame) as bytes."""
    flow = rng.integers(0, flows, n)
    v6 = (flow % 10) < 3  # 30 % of flows IPv6
    udp = (flow % 7) == 0  # ~14 % of flows UDP
    kind = rng.random(n)
    plen = np.where(
        kind < 0.45,
        0,  # bare ACKs
        np.where(
            kind < 0.75,
            rng.integers(1, 200, n),
            np.where(kind < 0.9, rng.integers(200, 1000, n), 1400 + rng.integers(0, 60, n)),
        ),
    ).astype(np.int64)
    l3 = np.where(v6, 40, 20)
    l4 = np.where(udp, 8, 20)
    flen = 14 + l3 + l4 + plen
    rec = 16 + flen
    roff = np.zeros(n, dtype=np.int64)
    roff[1:] = np.cumsum(rec[:-1])
    arr = np.zeros(int(rec.sum()), dtype=np.uint8)
    ts = t0_us + np.arange(n, dtype=np.int64) * 20  # 50k packets/s
    hdr = (
        np.stack([ts // 1_000_000, ts % 1_000_000, flen, flen], axis=1).astype("<u4").view(np.uint8)
    )
    arr[roff[:, None] + np.arange(16)] = hdr
    fo = roff + 16
    arr[fo[:, None] + np.arange(12)] = np.array([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2], np.uint8)
    _put16(arr, fo + 12, np.where(v6, 0x86DD, 0x0800))
    ip = fo + 14
    proto = np.where(udp, 17, 6)
    rev = rng.random(n) < 0.5  # direction
    a = (flow * 2654435761) & 0xFFFFFFFF
    cport = 1024 + (flow % 60000)
    sport_ = np.where(rev, np.where(udp, 53, 443), cport)
    dport_ = np.where(rev, cport, np.where(udp, 53, 443))
    i4 = np.nonzero(~v6)[0]
    o = ip[i4]
    arr[o] = 0x45
    _put16(arr, o + 2, (20 + l4[i4] + plen[i4]))
    _put16(arr, o + 4, i4 & 0xFFFF)
    arr[o + 6] = 0x40
    arr[o + 8] = 64
    arr[o + 9] = proto[i4]
    srcip = np.where(rev[i4], 0xC6336400 + (a[i4] & 0xFF), 0x0A000000 + (a[i4] & 0xFFFFFF))
    dstip = np.where(rev[i4], 0x0A000000 + (a[i4] & 0xFFFFFF), 0xC6336400 + (a[i4] & 0xFF))
    _put32(arr, o + 12, srcip)
    _put32(arr, o + 16, dstip)
    i6 = np.nonzero(v6)[0]
    o = ip[i6]
    arr[o] = 0x60
    _put16(arr, o + 4, l4[i6] + plen[i6])
    arr[o + 6] = proto[i6]
    arr[o + 7] = 64
    cli, srv = np.where(rev[i6], 24, 8), np.where(rev[i6], 8, 24)
    for base, is_cli in ((cli, True), (srv, False)):
        arr[o + base] = 0x20
        arr[o + base + 1] = 0x01
        arr[o + base + 2] = 0x0D
        arr[o + base + 3] = 0xB8 if is_cli else 0xB9
        _put32(arr, o + base + 12, a[i6])
    t = ip + l3
    _put16(arr, t, sport_)
    _put16(arr, t + 2, dport_)
    iu = np.nonzero(udp)[0]
    _put16(arr, t[iu] + 4, 8 + plen[iu])
    it = np.nonzero(~udp)[0]
    _put32(arr, t[it] + 4, (a[it] + np.arange(it.shape[0])) & 0xFFFFFFFF)
    arr[t[it] + 12] = 0x50
    arr[t[it] + 13] = np.where(plen[it] > 0, 0x18, 0x10)
    return arr.tobytes()


def write_synthetic(path: Path, packets: int, flows: int = 50_000, seed: int = 7) -> None:
    """Write a synthetic Ethernet pcap of `packets` packets (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        done = 0
        while done < packets:
            n = min(CHUNK, packets - done)
            fh.write(synth_chunk(rng, n, 1_700_000_000_000_000 + done * 20, flows))
            done += n


def bench_dpkt(path: Path, limit: int) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    keys = 0
    with open(path, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                keys ^= hash((ip.src, ip.dst, l4.sport, l4.dport, ip.p))
            n += 1
            if n >= limit:
                break
    return n, time.perf_counter() - t


def agreement(path: Path, limit: int = 20_000) -> tuple[int, int]:
    """How many of the first `limit` packets decode to the same 5-tuple + ip_len as dpkt."""
    b = next(read_batches(path, max_packets=limit))
    same = 0
    with open(path, "rb") as fh:
        for i, (_ts, frame) in enumerate(dpkt.pcap.Reader(fh)):
            if i >= len(b):
                break
            ip = dpkt.ethernet.Ethernet(frame).data
            v6 = isinstance(ip, dpkt.ip6.IP6)
            src = ip.src if v6 else b"\x00" * 10 + b"\xff\xff" + ip.src
            dst = ip.dst if v6 else b"\x00" * 10 + b"\xff\xff" + ip.dst
            ip_len = 40 + ip.plen if v6 else ip.len
            want = (src, dst, ip.data.sport, ip.data.dport, ip.p if not v6 else ip.nxt, ip_len)
            got = (
                b.src[i].tobytes(),
                b.dst[i].tobytes(),
                int(b.sport[i]),
                int(b.dport[i]),
                int(b.proto[i]),
                int(b.ip_len[i]),
            )
            same += want == got
    return same, len(b)


def bench_corpus(loops: int = 10) -> None:
    """read + decode vs dpkt on the shared corpus's bench captures (each file looped)."""
    root = Path(
        os.environ.get("LBM_CORPUS", Path(__file__).resolve().parents[1] / "../shared/corpus")
    )
    files = sorted((root / "pcaps" / "bench").glob("*.pcap"))
    if not files:
        print(f"bench corpus not found under {root}; skipped")
        return
    n = 0
    t = time.perf_counter()
    for _ in range(loops):
        for f in files:
            dec = Decoder()
            n += sum(len(b) for b in read_batches(f, decoder=dec))
    ours = n / (time.perf_counter() - t)
    m = 0
    t = time.perf_counter()
    for f in files:
        m += bench_dpkt(f, 10**9)[0]
    theirs = m / (time.perf_counter() - t)
    print(
        f"bench corpus ({len(files)} files x{loops}): read+decode {ours:,.0f} packets/s, "
        f"dpkt {theirs:,.0f} packets/s, ratio {ours / theirs:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--dpkt-packets", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, help="write the synthetic pcap here and keep it")
    args = ap.parse_args()
    tmpdir = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmpdir.name) / "synthetic.pcap"
    t = time.perf_counter()
    if not path.exists():
        write_synthetic(path, args.packets)
    size = os.path.getsize(path)
    print(
        f"synthetic capture: {path} {size / 1e6:.0f} MB, generated in "
        f"{time.perf_counter() - t:.1f}s; record walker: {IMPLEMENTATION}"
    )

    t = time.perf_counter()
    n_read = sum(len(b) for b in open_capture(path).batches())
    read_s = time.perf_counter() - t

    t = time.perf_counter()
    dec = Decoder()
    n_dec = 0
    ok = 0
    for b in read_batches(path, decoder=dec):
        n_dec += len(b)
        ok += int(np.count_nonzero(b.status == 0))
    full_s = time.perf_counter() - t

    raws = []
    for raw in open_capture(path).batches():
        raws.append(raw)
        if sum(len(r) for r in raws) >= 1_000_000:
            break
    n_mem = sum(len(r) for r in raws)
    dec2 = Decoder()
    t = time.perf_counter()
    for raw in raws:
        dec2.decode(raw)
    dec_s = time.perf_counter() - t
    del raws

    n_dpkt, dpkt_s = bench_dpkt(path, args.dpkt_packets)
    dpkt_pps = n_dpkt / dpkt_s
    rows = [
        ("read only (capture.read.reader)", n_read, read_s),
        ("read + decode (read_batches)", n_dec, full_s),
        ("decode alone (in memory)", n_mem, dec_s),
        ("dpkt per-packet loop", n_dpkt, dpkt_s),
    ]
    print(f"{'stage':32} {'packets':>10} {'seconds':>8} {'packets/s':>12} {'x dpkt':>7}")
    for name, n, s in rows:
        pps = n / s
        print(f"{name:32} {n:>10} {s:>8.2f} {pps:>12,.0f} {pps / dpkt_pps:>7.1f}")
    print(f"decoded to a 5-tuple: {ok}/{n_dec}; summary: {dec.summary}")
    print(f"read+decode MB/s: {size / 1e6 / full_s:.0f}")
    bench_corpus()
    same, total = agreement(path)
    print(f"same 5-tuple and ip_len as dpkt on the first {total} packets: {same}/{total}")
    tmpdir.cleanup()


if __name__ == "__main__":
    main()

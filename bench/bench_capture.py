"""Benchmark: capture file -> flow/dns Parquet, end to end, against per-packet baselines.

Generates a synthetic capture (default 2,000,000 packets over 50,000 flows: IPv4 and IPv6,
TCP sessions with handshakes, bulk data and teardown, TLS ClientHellos with SNI, HTTP requests,
DNS queries and answers, other UDP; frame sizes from bare ACKs to full 1514-byte frames,
averaging about 400 bytes) and a loop of the bench corpus (timestamps and addresses shifted
per copy), then measures, each in its own process so peak memory is its own:
- ours: `capture.pipeline.replay` into a fresh data dir (Parquet on disk at the end);
- a plain dpkt per-packet loop computing bidirectional 5-tuple flows (packets, bytes);
- `tshark -T fields` (5-tuple fields) on a slice;
- nfstream (if installed) on a slice;
and prints packets/s, MB/s, peak RSS and the ratio against dpkt, and checks that our flows
(5-tuple, packets each way) equal the dpkt loop's.

    .venv/bin/python bench/bench_capture.py [--packets N] [--flows F] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dpkt

ROOT = Path(__file__).resolve().parents[1]
ETH4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
ETH6 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"


# ---- synthetic capture ------------------------------------------------------------------
def client_hello(sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    sv = struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"
    exts = sni_ext + sv
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + struct.pack("!H", 4)
        + b"\x13\x01\x13\x02"
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def server_hello() -> bytes:
    exts = struct.pack("!HHH", 43, 2, 0x0304)
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + b"\x13\x01"
        + b"\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs


class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bulk = bytes(1448)
        self.sh = server_hello()

    @staticmethod
    def frame(v6: bool, src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
        if v6:
            return ETH6 + struct.pack("!IHBB", 0x60000000, len(l4), proto, 64) + src + dst + l4
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0)
        return ETH4 + ip + src + dst + l4

    def tcp(
        self,
        v6: bool,
        s: bytes,
        d: bytes,
        sp: int,
        dp: int,
        fl: int,
        seq: int,
        ack: int,
        data: bytes = b"",
    ) -> bytes:
        hdr = struct.pack(
            "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, fl, 65535, 0, 0
        )
        return self.frame(v6, s, d, 6, hdr + data)

    def udp(self, v6: bool, s: bytes, d: bytes, sp: int, dp: int, data: bytes) -> bytes:
        return self.frame(v6, s, d, 17, struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data)

    def addrs(self, i: int, v6: bool) -> tuple[bytes, bytes]:
        if v6:
            return (
                b"\xfd\x00" + bytes(10) + i.to_bytes(4, "big"),
                b"\x20\x01\x0d\xb8" + bytes(8) + (i % 4096).to_bytes(4, "big"),
            )
        return (
            bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]),
            bytes([198, 18, (i >> 8) & 15, i & 255]),
        )

    def flow(self, i: int, t0: float) -> list[tuple[float, bytes]]:
        rng = self.rng
        v6 = i % 5 == 0
        c, s = self.addrs(i, v6)
        sp = 10000 + (i * 7) % 50000
        kind = i % 10
        out: list[tuple[float, bytes]] = []
        t = t0
        gap = 0.002

        def add(f: bytes) -> None:
            nonlocal t
            out.append((t, f))
            t += gap * (0.5 + rng.random())

        if kind <= 5:  # TCP session
            dp = 443 if kind <= 2 else (80 if kind == 3 else 8000 + kind)
            cs, ss = rng.randrange(1 << 32), rng.randrange(1 << 32)
            add(self.tcp(v6, c, s, sp, dp, 0x02, cs, 0))
            add(self.tcp(v6, s, c, dp, sp, 0x12, ss, cs + 1))
            add(self.tcp(v6, c, s, sp, dp, 0x10, cs + 1, ss + 1))
            if kind <= 2:
                req = client_hello(f"host{i % 5000}.example.com")
            elif kind == 3:
                req = f"GET /x HTTP/1.1\r\nHost: web{i % 3000}.example.org\r\n\r\n".encode()
            else:
                req = bytes(rng.randrange(40, 400))
            add(self.tcp(v6, c, s, sp, dp, 0x18, cs + 1, ss + 1, req))
            cseq, sseq = cs + 1 + len(req), ss + 1
            first = self.sh if kind <= 2 else b""
            if first:
                add(self.tcp(v6, s, c, dp, sp, 0x18, sseq, cseq, first))
                sseq += len(first)
            for _ in range(rng.randrange(14, 44)):
                n = 1448 if rng.random() < 0.3 else rng.randrange(60, 700)
                add(self.tcp(v6, s, c, dp, sp, 0x18, sseq, cseq, self.bulk[:n]))
                sseq += n
                if rng.random() < 0.6:  # delayed ACKs: bare ACK frames are most of a mix
                    add(self.tcp(v6, c, s, sp, dp, 0x10, cseq, sseq))
            add(self.tcp(v6, c, s, sp, dp, 0x11, cseq, sseq))
            add(self.tcp(v6, s, c, dp, sp, 0x11, sseq, cseq + 1))
            add(self.tcp(v6, c, s, sp, dp, 0x10, cseq + 1, sseq + 1))
        elif kind <= 7:  # DNS
            name = f"n{i % 7000}.example.net"
            q = dpkt.dns.DNS(id=i & 0xFFFF, qd=[dpkt.dns.DNS.Q(name=name, type=1)])
            add(self.udp(v6, c, s, sp, 53, bytes(q)))
            an = dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=300, rdata=bytes([192, 0, 2, 1]))
            r = dpkt.dns.DNS(id=i & 0xFFFF, op=0x8180, qd=q.qd, an=[an])
            add(self.udp(v6, s, c, 53, sp, bytes(r)))
        else:  # other UDP (media-like)
            dp = 20000 + kind
            for _ in range(rng.randrange(20, 76)):
                n = rng.randrange(120, 400)  # voice/video-call-like datagrams
                if rng.random() < 0.5:
                    add(self.udp(v6, c, s, sp, dp, self.bulk[:n]))
                else:
                    add(self.udp(v6, s, c, dp, sp, self.bulk[:n]))
        return out


def generate(path: Path, packets: int, flows: int, seed: int = 1) -> tuple[int, int]:
    """Write the synthetic pcap; returns (packets, bytes). Flows run in cohorts of 1000 so
    time order holds and memory stays bounded."""
    gen = Gen(seed)
    written = 0
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        base = 1_700_000_000.0
        cohort = 1000
        start = 0
        while written < packets or start < flows:
            pkts: list[tuple[float, bytes]] = []
            for i in range(start, start + cohort):
                pkts += gen.flow(i, base + gen.rng.random() * 0.2)
            pkts.sort(key=lambda p: p[0])
            base = pkts[-1][0] + 0.001
            parts = []
            for t, f in pkts:
                sec = int(t)
                parts.append(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(f), len(f)))
                parts.append(f)
            fh.write(b"".join(parts))
            written += len(pkts)
            start += cohort
    return written, path.stat().st_size


def loop_corpus(path: Path, min_packets: int) -> tuple[int, int]:
    """Concatenate the bench corpus captures, looped with shifted times and addresses."""
    import numpy as np

    from capture.decode.decoder import read_batches

    corpus = Path(os.environ.get("LBM_CORPUS", ROOT.parent / "shared" / "corpus"))
    files = sorted((corpus / "pcaps" / "bench").glob("*.pcap"))
    if not files:
        raise SystemExit(f"bench_capture: no bench captures in {corpus}/pcaps/bench (LBM_CORPUS)")
    total = 0
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        copy = 0
        t_shift = 0
        while total < min_packets:
            for f in files:
                for b in read_batches(f):
                    buf = b.buf.copy()
                    ok = (b.status == 0) & (b.l3_off >= 0) & (b.tunnel == 0)
                    l3 = b.l3_off[ok]
                    v4 = b.ip_version[ok] == 4
                    # last byte of the source address: v4 at l3+15, v6 at l3+23
                    pos = np.where(v4, l3 + 15, l3 + 23)
                    buf[pos] = (buf[pos].astype(np.int64) + copy * 17).astype(np.uint8)
                    pos2 = np.where(v4, l3 + 14, l3 + 22)
                    buf[pos2] = (buf[pos2].astype(np.int64) + copy).astype(np.uint8)
                    ts = b.ts_ns + t_shift
                    parts = []
                    for i in range(len(b)):
                        off, cap = int(b.frame_off[i]), int(b.cap_len[i])
                        t = int(ts[i])
                        parts.append(
                            struct.pack(
                                "<IIII",
                                t // 1_000_000_000,
                                (t % 1_000_000_000) // 1000,
                                cap,
                                int(b.wire_len[i]),
                            )
                        )
                        parts.append(buf[off : off + cap].tobytes())
                    fh.write(b"".join(parts))
                    total += len(b)
            copy += 1
            t_shift += 3600 * 1_000_000_000
    return total, path.stat().st_size


# ---- measured runs (each in a child process) ---------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(pcap: str) -> dict[str, Any]:
    from appliance.policy.snapshot import Snapshot
    from capture.pipeline import Pipeline, replay
    from store.metadata import read_stream
    from store.paths import DataPaths

    data = Path(tempfile.mkdtemp(prefix="lbm-bench-"))
    try:
        snap = Snapshot.build()
        paths = DataPaths(data)
        t = time.perf_counter()
        pipe = Pipeline(
            paths=paths,
            gateway="gw1",
            writer_name="replay",
            snapshot=lambda: snap,
            internal_networks=["10.0.0.0/8", "fd00::/8"],
        )
        s = replay([pcap], pipe)
        pipe.close()  # every row durable and published as Parquet
        dt = time.perf_counter() - t
        rss = _rss_mb()
        table = read_stream(paths, "flow")
        flows: dict[str, list[int]] = {}
        for r in table.select(
            [
                "client_ip",
                "client_port",
                "server_ip",
                "server_port",
                "proto",
                "orig_pkts",
                "resp_pkts",
            ]
        ).to_pylist():
            key = _canon(
                r["client_ip"], r["client_port"], r["server_ip"], r["server_port"], r["proto"]
            )
            flows.setdefault(key, [0])[0] += r["orig_pkts"] + r["resp_pkts"]
        return {
            "packets": s.packets,
            "seconds": dt,
            "rss_mb": rss,
            "rows": table.num_rows,
            "dns_rows": s.dns_rows,
            "flows": {k: v[0] for k, v in flows.items()},
        }
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _canon(a: str, ap: int, b: str, bp: int, proto: str) -> str:
    x, y = (a, ap), (b, bp)
    lo, hi = (x, y) if x <= y else (y, x)
    return f"{proto} {lo[0]} {lo[1]} {hi[0]} {hi[1]}"


def run_dpkt(pcap: str, limit: int) -> dict[str, Any]:
    flows: dict[str, int] = {}
    n = 0
    t = time.perf_counter()
    with open(pcap, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            n += 1
            if n > limit:
                n -= 1
                break
            try:
                eth = dpkt.ethernet.Ethernet(frame)
            except (dpkt.UnpackError, IndexError):
                continue
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                fam = socket.AF_INET
            elif isinstance(ip, dpkt.ip6.IP6):
                fam = socket.AF_INET6
            else:
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                proto = "tcp"
            elif isinstance(l4, dpkt.udp.UDP):
                proto = "udp"
            else:
                continue
            key = _canon(
                socket.inet_ntop(fam, ip.src),
                l4.sport,
                socket.inet_ntop(fam, ip.dst),
                l4.dport,
                proto,
            )
            flows[key] = flows.get(key, 0) + 1
    dt = time.perf_counter() - t
    return {"packets": n, "seconds": dt, "rss_mb": _rss_mb(), "flows": flows}


def run_tshark(pcap: str, limit: int) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            pcap,
            "-c",
            str(limit),
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "udp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.dstport",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        check=True,
    )
    dt = time.perf_counter() - t
    return {"packets": proc.stdout.count(b"\n"), "seconds": dt}


def run_nfstream(pcap: str) -> dict[str, Any]:
    from nfstream import NFStreamer

    t = time.perf_counter()
    n_flows = 0
    pkts = 0
    for f in NFStreamer(source=pcap, statistical_analysis=False, n_dissections=0):
        n_flows += 1
        pkts += f.bidirectional_packets
    dt = time.perf_counter() - t
    return {"packets": pkts, "flows": n_flows, "seconds": dt, "rss_mb": _rss_mb()}


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return dict(json.loads(out.stdout))


def slice_pcap(src: Path, dst: Path, n: int) -> None:
    with src.open("rb") as fi, dst.open("wb") as fo:
        fo.write(fi.read(24))
        for _ in range(n):
            hdr = fi.read(16)
            if len(hdr) < 16:
                break
            cap = struct.unpack("<IIII", hdr)[2]
            fo.write(hdr + fi.read(cap))


def report(name: str, pcap: Path, packets: int, size: int, slice_n: int, tmp: Path) -> None:
    print(f"\n== {name}: {packets:,} packets, {size / 1e6:.0f} MB")
    ours = child(["ours", str(pcap)])
    if "error" in ours:
        print("ours failed:", ours["error"])
        return
    pps = ours["packets"] / ours["seconds"]
    print(
        f"ours    : {pps:12,.0f} pkt/s  {size / 1e6 / ours['seconds']:8.1f} MB/s  "
        f"peak RSS {ours['rss_mb']:.0f} MiB  flows {ours['rows']:,}  dns rows "
        f"{ours['dns_rows']:,}"
    )
    dp = child(["dpkt", str(pcap), str(10**12)])
    dpps = dp["packets"] / dp["seconds"]
    print(
        f"dpkt    : {dpps:12,.0f} pkt/s  (ours = {pps / dpps:.1f}x)  peak RSS "
        f"{dp['rss_mb']:.0f} MiB"
    )
    same = ours["flows"] == dp["flows"]
    print(
        f"same flows as the dpkt loop (5-tuple, packets): {same} "
        f"({len(ours['flows']):,} vs {len(dp['flows']):,})"
    )
    part = tmp / f"{name}-slice.pcap"
    slice_pcap(pcap, part, slice_n)
    if shutil.which("tshark"):
        ts = child(["tshark", str(part), str(slice_n)])
        if "error" not in ts:
            tpps = ts["packets"] / ts["seconds"]
            print(
                f"tshark  : {tpps:12,.0f} pkt/s  (ours = {pps / tpps:.1f}x; "
                f"{slice_n:,}-packet slice)"
            )
    nf = child(["nfstream", str(part)])
    if "error" in nf:
        print(f"nfstream: not measured ({nf['error']})")
    else:
        npps = nf["packets"] / nf["seconds"]
        print(
            f"nfstream: {npps:12,.0f} pkt/s  (ours = {pps / npps:.1f}x; slice; "
            f"peak RSS {nf['rss_mb']:.0f} MiB)"
        )
    goal = pps >= 1_000_000 and ours["rss_mb"] <= 512 and same
    print(f"goals (>= 1M pkt/s, <= 512 MiB, same flows): {'met' if goal else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="200k packets / 5k flows")
    ap.add_argument("--slice", type=int, default=200_000)
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        what, rest = a.child[0], a.child[1:]
        if what == "ours":
            res = run_ours(rest[0])
        elif what == "dpkt":
            res = run_dpkt(rest[0], int(rest[1]))
        elif what == "tshark":
            res = run_tshark(rest[0], int(rest[1]))
        else:
            res = run_nfstream(rest[0])
        print(json.dumps(res))
        return
    if a.quick:
        a.packets, a.flows = 200_000, 5_000
    tmp = Path(tempfile.mkdtemp(prefix="lbm-bench-cap-"))
    try:
        synth = tmp / "synthetic.pcap"
        t = time.perf_counter()
        n, size = generate(synth, a.packets, a.flows)
        print(f"generated {n:,} packets ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f}s")
        report("synthetic", synth, n, size, min(a.slice, n), tmp)
        looped = tmp / "corpus-looped.pcap"
        n, size = loop_corpus(looped, a.packets // 2)
        report("bench corpus looped", looped, n, size, min(a.slice, n), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

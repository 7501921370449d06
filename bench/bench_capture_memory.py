"""Benchmark: peak memory of `lbm capture replay` against concurrent flows and file size.

Issue 18's memory goal: peak RSS <= 512 MiB replaying 8M packets with 200k concurrent flows,
and flat as the file grows. This bench writes captures of TCP flows (20 packets each: a
handshake, 14 small data segments, both FINs) interleaved so that `--concurrent` flows are open
at once; a generation of flows is followed by the next 400 s later, when the last has idled
out (Zeek's 5 min TCP timeout), so the flow table's live count stays at `--concurrent` while
the flows that ended become rows. Each size is replayed through the CLI in its own process
(fresh data dir); the smallest is the baseline of the same run, so the ratio says whether
memory grows with the file. It also prints the per-flow state size of the pipeline.

    .venv/bin/python bench/bench_capture_memory.py [--packets 4000000,8000000]
        [--concurrent 200000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LBM = Path(sys.executable).parent / "lbm"
GOAL_MIB = 512
PER_FLOW = 20  # packets
PAYLOAD = 26
_FROM_SERVER = (1, 4, 6, 8, 10, 12, 14, 16, 18)  # packet numbers the server sends


def _script() -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Flags, seq, ack, payload length per packet number of a flow; who sends it."""
    flags, seqs, acks, lens = [], [], [], []
    c, s = 1000, 5000
    for i in range(PER_FLOW):
        srv = i in _FROM_SERVER
        fl, pl = 0x10, 0
        if i == 0:
            fl, seq, ack = 0x02, c, 0
            c += 1
        elif i == 1:
            fl, seq, ack = 0x12, s, c
            s += 1
        elif i == 2:
            seq, ack = c, s
        elif i < 17:
            fl, pl = 0x18, PAYLOAD
            seq, ack = (s, c) if srv else (c, s)
            if srv:
                s += PAYLOAD
            else:
                c += PAYLOAD
        elif i == 17:
            fl, seq, ack = 0x11, c, s
            c += 1
        elif i == 18:
            fl, seq, ack = 0x11, s, c
            s += 1
        else:
            seq, ack = c, s
        flags.append(fl)
        seqs.append(seq)
        acks.append(ack)
        lens.append(pl)
    return flags, seqs, acks, lens, [int(i in _FROM_SERVER) for i in range(PER_FLOW)]


def generate(path: Path, packets: int, concurrent: int, chunk: int = 1 << 20) -> int:
    """Write the capture (pcap, Ethernet, IPv4/TCP); returns the number of flows."""
    flags, seqs, acks, lens, srv = (np.asarray(a) for a in _script())
    flen = 14 + 20 + 20 + PAYLOAD
    with path.open("wb") as fh:
        fh.write(np.array([0xA1B2C3D4], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes())
        fh.write(np.array([0, 0, 65535, 1], "<u4").tobytes())
        for a in range(0, packets, chunk):
            j = np.arange(a, min(a + chunk, packets), dtype=np.int64)
            n = j.size
            rnd, lane = j // concurrent, j % concurrent
            gen = rnd // PER_FLOW
            flow, k = lane + concurrent * gen, rnd % PER_FLOW
            ts_us = 1_700_000_000_000_000 + j * 10 + gen * 400_000_000
            rec = np.zeros((n, 16 + flen), np.uint8)
            hdr = rec[:, :16].view("<u4")
            hdr[:, 0], hdr[:, 1] = ts_us // 1_000_000, ts_us % 1_000_000
            hdr[:, 2] = hdr[:, 3] = flen
            f = rec[:, 16:]
            f[:, 0:12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]
            f[:, 12:15] = [8, 0, 0x45]
            f[:, 22:24] = [64, 6]
            total = np.where(lens[k] > 0, 40 + PAYLOAD, 40).astype(">u2")
            f[:, 16:18] = total.view(np.uint8).reshape(n, 2)
            client = (10 << 24) + (flow % 60000) + 1
            server = (192 << 24) + (flow // 60000) % 65536 + 1
            cport = 1024 + (flow // 60000) * 7 % 30000 + flow % 997
            s = srv[k].astype(bool)
            for col, (x, y) in ((26, (server, client)), (30, (client, server))):
                f[:, col : col + 4] = np.where(s, x, y).astype(">u4").view(np.uint8).reshape(n, 4)
            for col, (x, y) in ((34, (443, cport)), (36, (cport, 443))):
                f[:, col : col + 2] = np.where(s, x, y).astype(">u2").view(np.uint8).reshape(n, 2)
            f[:, 38:42] = seqs[k].astype(">u4").view(np.uint8).reshape(n, 4)
            f[:, 42:46] = acks[k].astype(">u4").view(np.uint8).reshape(n, 4)
            f[:, 46], f[:, 47], f[:, 48:50] = 0x50, flags[k], 0xFF
            fh.write(rec.tobytes())
    return int(-(-packets // (concurrent * PER_FLOW)) * concurrent)


def replay(pcap: Path, tmp: Path) -> dict[str, float]:
    """`lbm capture replay` in a fresh data dir: wall seconds, user+sys, peak RSS (MiB)."""
    data = tmp / "data"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run([str(LBM), "--data-dir", str(data), "init"], check=True, capture_output=True)
    t = time.perf_counter()
    proc = subprocess.Popen(
        [str(LBM), "--data-dir", str(data), "capture", "replay", str(pcap)],
        stdout=subprocess.DEVNULL,
    )
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lbm capture replay {pcap} failed")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss / 1024}


def state_bytes() -> dict[str, int]:
    from capture.app.feed import AppFeed
    from capture.flow.table import FlowTable
    from capture.subjects.gate import ArchiveGate

    gate = ArchiveGate(cast(Any, None), str)
    gate.grow(1)
    table, appf = FlowTable(), AppFeed()
    appf.grow(1)
    parts = {
        "flow table": table.state_bytes_per_flow(),
        "app metadata": appf.state_bytes_per_flow(),
        "archive gate": gate.state_bytes_per_flow(),
        "principal": 8,
    }
    parts["total"] = sum(parts.values())
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", default="4000000,8000000", help="sizes, comma-separated")
    ap.add_argument("--concurrent", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="1M and 2M packets, 50k flows")
    args = ap.parse_args()
    sizes = [int(x) for x in args.packets.split(",")]
    conc = args.concurrent
    if args.quick:
        sizes, conc = [1_000_000, 2_000_000], 50_000
    parts = state_bytes()
    print("per-flow state (bytes per flow slot; slots <= 2x live flows):")
    for k, v in parts.items():
        print(f"  {k:14} {v:5d}")
    print(f"  x {conc} concurrent flows: {parts['total'] * conc / 2**20:.0f} MiB (live slots)")
    with tempfile.TemporaryDirectory(prefix="lbm-bench-mem-") as d:
        tmp = Path(d)
        base: float | None = None
        for n in sizes:
            pcap = tmp / f"c{n}.pcap"
            flows = generate(pcap, n, conc)
            r = replay(pcap, tmp)
            pcap.unlink()
            base = base or r["rss"]
            print(
                f"{n:>10,} packets, {flows:,} flows ({conc:,} at once): peak RSS "
                f"{r['rss']:.0f} MiB ({r['rss'] / base:.2f}x the smallest; goal <= {GOAL_MIB}), "
                f"wall {r['wall']:.1f} s, user+sys {r['cpu']:.1f} s, "
                f"{n / r['wall'] / 1e6:.2f}M packets/s"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

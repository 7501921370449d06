"""Benchmark issue 18's goals as a user runs them: `lbm capture replay FILE`, whole process.

Side by side in one run, on a synthetic capture (default 2,000,000 packets, 50,000 flows, about
1,500 open at once: bench/capture_gen.py) and on the corpus's bench captures looped to a similar
size: ours through the CLI in a fresh data dir (process start to exit, Parquet written), ours in
process (`capture.replay.replay`), nfstream without DPI on the whole capture, a dpkt loop,
tshark's conversation fields on a slice, and libpcap's bare read (`tcpdump -r FILE -w /dev/null`).
Each prints packets/s, wall, user+sys CPU and peak RSS (ours also its CPU by part, sampled from
/proc every 20 ms: the main thread, the busiest other thread, which is the reader's, and child
processes, which are the ledger's hashing child); then the goals as ratios measured in the same
run, "met" or "NOT met". Then start-up (a 1-packet capture, `lbm --help`, `python -c pass`).

`--memory`: 8M packets with 200,000 flows open at once; peak RSS of ours at 2M, 4M and 8M
packets of that capture (flat as the file grows?) and nfstream's at 8M.

    .venv/bin/python bench/bench_capture.py [--quick] [--memory] [--packets N] [--flows F]
        [--concurrent C] [--seed S] [--slice N] [--repeat R]

Generated captures are cached in /tmp/lbm-bench-capture (LBM_BENCH_CACHE). The machine is
shared: wall times are noisy, so compare the ratios, which come from the same run. Exit status
1 if a run failed or a baseline is missing (`make bench` installs nfstream and tcpdump).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture_baselines as cb
import capture_gen as cg
from capture_corpus import mix_line
from capture_gen import generate  # noqa: F401  (other scripts call bench_capture.generate)

MIB = 512
problems: list[str] = []


def line(r: cb.Run, ours: cb.Run | None = None, note: str = "") -> None:
    if r.error:
        print(f"  {r.name:<34} not measured: {r.error}")
        problems.append(f"{r.name}: {r.error}")
        return
    ratio = ""
    if ours is not None and r is not ours and r.pps() > 0 and not ours.error:
        ratio = f"  ours = {ours.pps() / r.pps():5.2f}x"
    cores = r.cpu / r.wall if r.wall else 0.0
    print(
        f"  {r.name:<34} {r.pps():>11,.0f} pkt/s  wall {r.wall:6.2f} s  user+sys {r.cpu:6.2f} s"
        f" ({cores:.2f} cores)  peak RSS {r.rss_mib:5.0f} MiB{ratio}{note}"
    )


def goal(text: str, value: str, ok: bool | None, note: str = "") -> None:
    verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
    print(f"  goal {text:<44} {value:>14}  {verdict}{note}")


def best(runs: list[cb.Run]) -> cb.Run:
    good = [r for r in runs if not r.error]
    return min(good, key=lambda r: r.wall) if good else runs[-1]


def repeat(n: int, fn: Any) -> cb.Run:
    return best([fn() for _ in range(n)])


def section(title: str, pcap: Path, mix: dict[str, Any], a: argparse.Namespace) -> None:
    packets = int(mix["packets"])
    size = pcap.stat().st_size
    print(f"\n== {title}: {pcap.name}, {packets:,} packets, {size / 1e6:,.0f} MB")
    print("  " + mix_line(mix))
    keep: list[Path] = []

    def cli() -> cb.Run:
        r, data = cb.ours_cli(pcap, keep=True)
        keep.append(data)
        return r

    ours = repeat(a.repeat, cli)
    nflows = ours.out.get("flows")
    line(ours, note=f"  flows {nflows:,}" if isinstance(nflows, int) else "")
    if ours.parts_line():  # the reader is the busiest other thread; the ledger's hash a child
        print(f"  {'':<34} CPU by part: {ours.parts_line()}")
    inproc = repeat(
        a.repeat, lambda: cb.child("inproc", str(pcap), name="ours in process (pipeline.replay)")
    )
    if not inproc.error:
        secs = float(inproc.out["seconds"])
        print(
            f"  {inproc.name:<34} {inproc.packets / secs:>11,.0f} pkt/s  replay call {secs:6.2f} s"
            f" (process {inproc.wall:.2f} s, user+sys {inproc.cpu:.2f} s)  peak RSS"
            f" {inproc.rss_mib:5.0f} MiB"
        )
    else:
        line(inproc)
    nf_src, nf_note = pcap, "  (whole capture)"
    if a.nfstream_slice:
        nf_src = cg.prefix(pcap, a.nfstream_slice)
        nf_note = f"  ({a.nfstream_slice:,}-packet slice only: --nfstream-slice)"
    nf = repeat(a.repeat, lambda: cb.child("nfstream", str(nf_src), name="nfstream (no DPI)"))
    line(nf, ours, nf_note)
    dp = cb.child("dpkt", str(pcap), name="dpkt loop (5-tuple flows)")
    line(dp, ours, "  (whole capture)")
    tshark = cb.Run("tshark conversation fields", error="tshark not installed")
    slice_n = min(a.slice, packets)
    if shutil.which("tshark"):
        part = cg.prefix(pcap, slice_n)
        tshark = cb.tshark_fields(part, slice_n)
    line(tshark, ours, f"  ({slice_n:,}-packet slice)")
    tcpdump = cb.Run("tcpdump -r FILE -w /dev/null", error="tcpdump not installed (make bench)")
    if shutil.which("tcpdump"):
        tcpdump = repeat(a.repeat, lambda: cb.tcpdump_read(pcap, packets))
    line(tcpdump, ours, "  (whole capture)")
    if not ours.error and not dp.error:
        mine = cb.flows_of_data_dir(keep[-1] if keep else Path("/nonexistent"))
        theirs = dp.out["flows"]
        same = mine == theirs
        print(
            f"  same flows as the dpkt loop (5-tuple, packets): {same} "
            f"({len(mine):,} vs {len(theirs):,})"
        )
        if not same:
            problems.append(f"{title}: our flows differ from the dpkt loop's")
    for d in keep:
        shutil.rmtree(d.parent, ignore_errors=True)
    if not ours.error and ours.packets != packets:
        problems.append(f"{title}: ours counted {ours.packets:,} packets of {packets:,}")
    ok = not ours.error
    ratio_goal("ours / nfstream (no DPI) >= 9x", ours, nf, 9.0)
    ratio_goal("ours / tcpdump bare read >= 0.35x", ours, tcpdump, 0.35)
    goal(
        "ours >= 1.0M packets/s",
        f"{ours.pps() / 1e6:.2f}M" if ok else "-",
        ours.pps() >= 1e6 if ok else None,
    )
    goal(
        f"ours peak RSS <= {MIB} MiB",
        f"{ours.rss_mib:.0f} MiB" if ok else "-",
        ours.rss_mib <= MIB if ok else None,
    )


def ratio_goal(text: str, ours: cb.Run, base: cb.Run, floor: float) -> None:
    """Packets/s of ours over the baseline's, by wall time (the goal), with the same ratio by
    CPU time (user+sys) beside it: on a loaded machine that one moves less."""
    if ours.error or base.error or not base.pps() or not base.cpu or not ours.cpu:
        goal(text, "-", None)
        return
    r = ours.pps() / base.pps()
    by_cpu = (ours.packets / ours.cpu) / (base.packets / base.cpu)
    goal(text, f"{r:.2f}x", r >= floor, f"  (by CPU time {by_cpu:.2f}x)")


def startup(tries: int) -> None:
    print(f"\n== start-up (best of {tries}; each replay in a fresh data dir, init not timed)")
    one = cg.one_packet()

    def replay_one() -> cb.Run:
        return cb.ours_cli(one)[0]

    r1 = repeat(tries, replay_one)
    hlp = repeat(tries, lambda: cb.measure("lbm --help", [cb.lbm_exe(), "--help"]))
    bare = repeat(tries, lambda: cb.measure("python -c pass", [sys.executable, "-c", "pass"]))
    numpy = [sys.executable, "-c", "import numpy"]
    floor = repeat(tries, lambda: cb.measure("python -c 'import numpy'", numpy))
    for r in (r1, hlp, bare, floor):
        if r.error:
            line(r)
        else:
            print(
                f"  {r.name:<34} wall {r.wall:6.3f} s  user+sys {r.cpu:6.3f} s"
                f"  peak RSS {r.rss_mib:4.0f} MiB"
            )
    first = r1.out.get("timing", {}).get("first_batch_s") if not r1.error else None
    if not r1.error:
        print(f"  (the 1-packet replay takes {r1.wall - bare.wall:.3f} s more than a bare Python)")
        if isinstance(first, int | float) and not floor.error:
            print(
                f"  first packet in the pipeline {first:.3f} s after process start (--json"
                f" timing); numpy's import alone: {floor.wall:.3f} s"
            )
    imp = cb.import_seconds(["capture", "replay", str(one)])
    print(
        "  imports of that replay (python -X importtime, all of them, its overhead included): "
        + (f"{imp:.3f} s" if imp is not None else "n/a")
    )
    goal(
        "start-up to first packet <= 0.2 s",
        f"{first:.3f} s" if isinstance(first, int | float) else "-",
        first <= 0.2 if isinstance(first, int | float) else None,
    )
    goal(
        "1-packet replay < 0.5 s",
        f"{r1.wall:.3f} s" if not r1.error else "-",
        r1.wall < 0.5 if not r1.error else None,
    )


def state_bytes() -> None:
    r = cb.child("state-bytes", name="flow table per-flow state")
    b = None if r.error else r.out.get("bytes")
    table = f"{r.out.get('module')}.FlowTable" if not r.error else "the flow table"
    if isinstance(b, int | float):
        print(f"  per-flow state: {b:,.0f} bytes ({table}.state_bytes_per_flow)")
    else:
        print(f"  per-flow state: n/a ({table} does not expose state_bytes_per_flow)")


def memory(a: argparse.Namespace) -> None:
    packets, conc = a.packets or 8_000_000, a.concurrent or 200_000
    flows = a.flows or packets // 20
    t = time.perf_counter()
    full, mix = cg.synthetic(packets, flows, conc, a.seed)
    print(
        f"\n== memory: {packets:,} packets, {conc:,} flows open at once ({full.name}; "
        f"ready in {time.perf_counter() - t:.0f} s, cached)"
    )
    print("  " + mix_line(mix))
    state_bytes()
    steps = [n for n in (packets // 4, packets // 2) if n > 0] + [packets]
    rss: list[float] = []
    still: list[int] = []  # flows still open when the file ends (the flow table's live set)
    last: cb.Run | None = None
    for n in steps:
        pcap = cg.prefix(full, n)
        r, _ = cb.ours_cli(pcap)
        r.name = f"ours, first {n:,} packets"
        flushed = r.out.get("flow_counters", {}).get("ended_flush") if not r.error else None
        still.append(flushed if isinstance(flushed, int) else 0)
        line(r, note=f"  open at the end {still[-1]:,}" if still[-1] else "")
        rss.append(r.rss_mib if not r.error else float("nan"))
        last = r
    nf = cb.child("nfstream", str(full), name=f"nfstream (no DPI), {packets:,}")
    line(nf, last)
    print(
        "  peak RSS as the file grows: "
        + ", ".join(f"{n / 1e6:g}M {m:.0f} MiB" for n, m in zip(steps, rss, strict=True))
    )
    if all(still) and len(still) > 1:
        # Zeek's timeouts keep a UDP flow 60 s after its last packet and a closed TCP
        # connection 5 s: in a capture shorter than that, the table's live set grows with the
        # file although no more flows are in flight at once
        pairs = zip(rss[1:], still[1:], strict=True)
        per = [(m - rss[0]) * 2**20 / (f - still[0]) for m, f in pairs if f > still[0]]
        text = ", ".join(f"{n / 1e6:g}M {f:,}" for n, f in zip(steps, still, strict=True))
        if per:
            added = ", ".join(f"{b:,.0f} B" for b in per)
            text += f"; peak RSS added per flow added since {steps[0] / 1e6:g}M: {added}"
        print(f"  flows open in the table at the end: {text}")
    ok = last is not None and not last.error
    goal(
        f"ours peak RSS <= {MIB} MiB at {packets / 1e6:g}M",
        f"{rss[-1]:.0f} MiB" if ok else "-",
        rss[-1] <= MIB if ok else None,
    )
    growth = rss[-1] / rss[0] if ok and rss[0] > 0 else None
    goal(
        f"flat: RSS {steps[-1] / 1e6:g}M / {steps[0] / 1e6:g}M <= 1.15",
        f"{growth:.2f}x" if growth else "-",
        None if growth is None else growth <= 1.15,
    )
    if ok and not nf.error:
        print(f"  ours / nfstream peak RSS: {rss[-1] / nf.rss_mib:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, help="synthetic capture size (default 2M; --memory 8M)")
    ap.add_argument("--flows", type=int, help="flows in it (default 50k; --memory packets/20)")
    ap.add_argument("--concurrent", type=int, help="flows open at once (1,500; --memory 200k)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slice", type=int, default=200_000, help="tshark's slice (packets)")
    ap.add_argument("--nfstream-slice", type=int, default=0, help="nfstream on a slice only")
    ap.add_argument("--repeat", type=int, default=1, help="best of R for the timed runs")
    ap.add_argument("--quick", action="store_true", help="200k packets, 5k flows: a sanity run")
    ap.add_argument("--memory", action="store_true", help="the 8M-packet, 200k-concurrent run")
    ap.add_argument("--no-corpus", action="store_true", help="skip the looped corpus")
    a = ap.parse_args()
    for k in ("packets", "flows", "concurrent", "slice", "repeat"):
        v = getattr(a, k)
        if v is not None and v < 1:
            ap.error(f"--{k} must be at least 1 (got {v})")
    print(
        f"bench_capture: {' '.join(sys.argv[1:]) or '(defaults)'}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: wall times "
        "are noisy; ratios come from the same run)"
    )
    print(
        f"  tools: {cb.lbm_exe()}; tcpdump {shutil.which('tcpdump') or 'MISSING'}; "
        f"tshark {shutil.which('tshark') or 'MISSING'}; nfstream {cb.baseline_version('nfstream')}"
    )
    if a.memory:
        if a.quick:
            a.packets, a.concurrent, a.flows = a.packets or 400_000, a.concurrent or 20_000, a.flows
        memory(a)
    else:
        if a.quick:
            a.packets, a.flows = a.packets or 200_000, a.flows or 5_000
        packets, flows = a.packets or 2_000_000, a.flows or 50_000
        conc = a.concurrent or 1_500
        t = time.perf_counter()
        pcap, mix = cg.synthetic(packets, flows, conc, a.seed)
        print(f"synthetic capture ready in {time.perf_counter() - t:.0f} s (cached in {cg.CACHE})")
        section(f"synthetic ({conc:,} flows open at once)", pcap, mix, a)
        if not a.no_corpus:
            pcap, mix = cg.corpus_loop(packets)
            section("bench corpus looped (addresses mapped per copy)", pcap, mix, a)
        print()
        state_bytes()
        startup(2 if a.quick else 5)
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems))
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

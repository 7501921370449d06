"""Measured runs for bench/bench_capture.py: ours and the baselines, each its own process.

Every run is a child process timed from spawn to exit: wall time, user+sys CPU (its rusage,
which includes the processes it waited for), peak RSS as the kernel reports it (the largest
single process, `ru_maxrss`) and the peak of the whole process tree's RSS sampled every 20 ms
(nfstream's meters, or any worker processes of ours, are separate processes).

- ours, as a user runs it: `lbm --data-dir D capture replay --json FILE` in a fresh data dir
  (`lbm --data-dir D init` first, not timed); the process ends with the Parquet written.
- ours in process: `capture.replay.replay` into a fresh data dir, timed around the call.
- nfstream without DPI: `NFStreamer(source, statistical_analysis=False, n_dissections=0)`.
- a dpkt per-packet loop computing bidirectional 5-tuple flows (packets each way).
- tshark's conversation fields (`-T fields`, 5-tuple and length).
- libpcap's bare read: `tcpdump -r FILE -w /dev/null`.

`python bench/capture_baselines.py KIND ARGS...` is the child side (prints one JSON object).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Run:
    name: str
    packets: int = 0
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    maxrss_mib: float = 0.0  # ru_maxrss: the largest single process
    tree_mib: float = 0.0  # sampled: the whole process tree at once
    out: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    cpu_parts: dict[str, float] = field(default_factory=dict)  # sampled: threads, children

    def parts_line(self) -> str:
        """The main thread's, the busiest other thread's and the child processes' CPU."""
        p = self.cpu_parts
        if not p:
            return ""
        others = sorted((v for k, v in p.items() if k.startswith("thread ")), reverse=True)
        kids = sum(v for k, v in p.items() if k.startswith("child "))
        text = f"main thread {p.get('main thread', 0.0):.2f} s"
        if others:
            text += f", busiest other thread {others[0]:.2f} s (all others {sum(others):.2f} s)"
        return text + f", child processes {kids:.2f} s"

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def rss_mib(self) -> float:
        return max(self.maxrss_mib, self.tree_mib)

    def pps(self, seconds: float | None = None) -> float:
        s = self.wall if seconds is None else seconds
        return self.packets / s if s > 0 else 0.0


def _cpu_parts(pid: int, parts: dict[str, float]) -> None:
    """CPU seconds so far of the process `pid`'s threads (`thread TID`, the main one `main
    thread`) and of its child processes (`child PID`), from /proc, into `parts` (the last
    sample before exit stands: up to one sampling interval short)."""
    hz = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids = [int(c) for c in fh.read().split()]
        except (OSError, ValueError, IndexError):
            continue
        key = "main thread" if int(tid) == pid else f"thread {tid}"
        parts[key] = (int(f[11]) + int(f[12])) / hz  # utime + stime
        for k in kids:
            sub: dict[str, float] = {}
            _cpu_parts(k, sub)
            parts[f"child {k}"] = sum(sub.values())


def _tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def measure(name: str, cmd: list[str], packets: int = 0, cwd: Path | None = None) -> Run:
    """Run `cmd` to its exit through a small launcher process (`launch` below), so that its
    peak RSS is its own: Linux carries the forking process's RSS high-water mark into a child's
    `ru_maxrss`, and this process holds flow tables. stdout is parsed as JSON when it is."""
    run = Run(name, packets)
    with tempfile.TemporaryDirectory(prefix="lbm-bench-run-") as tmp:
        stats, out, err = Path(tmp, "stats"), Path(tmp, "out"), Path(tmp, "err")
        launcher = [sys.executable, "-S", str(Path(__file__).resolve()), "launch", str(stats)]
        with out.open("wb") as o, err.open("wb") as e:
            rc = subprocess.run([*launcher, *cmd], stdout=o, stderr=e, cwd=cwd or ROOT).returncode
        if rc != 0 or not stats.exists():
            lines = err.read_text(errors="replace").strip().splitlines() or ["failed"]
            run.error = f"exit {rc}: {lines[-1][:300]}"
            return run
        st = json.loads(stats.read_text())
        run.wall, run.user, run.sys = st["wall"], st["user"], st["sys"]
        run.maxrss_mib, run.tree_mib = st["maxrss_kib"] / 1024, st["tree_bytes"] / 2**20
        run.cpu_parts = st.get("cpu_parts", {})
        text = out.read_text(errors="replace")
    try:
        run.out = dict(json.loads(text))
    except ValueError:
        run.out = {"stdout_lines": text.count("\n")}
    run.packets = int(run.out.get("packets", packets) or packets)
    return run


def launch(stats: str, cmd: list[str]) -> None:
    """The launcher (run with `python -S`, stdlib only): spawn `cmd`, sample its process tree's
    RSS every 20 ms, wait for it, write wall/user/sys/ru_maxrss/tree peak to `stats` (only if
    it exits 0), and exit with its status."""
    t0 = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    peak = [0]
    parts: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss(pid))
            _cpu_parts(pid, parts)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        st = {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime}
        st.update(maxrss_kib=ru.ru_maxrss, tree_bytes=peak[0], cpu_parts=parts)
        Path(stats).write_text(json.dumps(st))
    sys.exit(code if code >= 0 else 128 - code)


def lbm_exe() -> str:
    here = Path(sys.executable).parent / "lbm"
    found = str(here) if here.exists() else shutil.which("lbm")
    if not found:
        raise SystemExit("bench_capture: no `lbm` next to this Python or on PATH (make venv)")
    return found


def fresh_data_dir() -> Path:
    data = Path(tempfile.mkdtemp(prefix="lbm-bench-data-")) / "d"
    init = subprocess.run(
        [lbm_exe(), "--data-dir", str(data), "init"], capture_output=True, text=True
    )
    if init.returncode != 0:
        raise SystemExit(f"bench_capture: lbm init failed: {init.stderr.strip()[-300:]}")
    return data


def ours_cli(pcap: Path, keep: bool = False) -> tuple[Run, Path]:
    """`lbm capture replay` in a fresh data dir; the data dir is removed unless `keep`."""
    data = fresh_data_dir()
    cmd = [lbm_exe(), "--data-dir", str(data), "capture", "replay", "--json", str(pcap)]
    run = measure("ours (lbm capture replay)", cmd)
    if not keep:
        shutil.rmtree(data.parent, ignore_errors=True)
    return run, data


def import_seconds(args: list[str]) -> float | None:
    """Seconds spent importing modules in `lbm ARGS` (fresh data dir), by `python -X
    importtime` (which adds its own overhead): the import part of start-up."""
    data = fresh_data_dir()
    try:
        cmd = [sys.executable, "-X", "importtime", lbm_exe(), "--data-dir", str(data), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)
    total = 0
    for ln in p.stderr.splitlines():
        parts = ln.split("|")
        top = len(parts) == 3 and parts[2].startswith(" ") and not parts[2].startswith("  ")
        if ln.startswith("import time:") and top and parts[1].strip().isdigit():
            total += int(parts[1])
    return total / 1e6 if p.returncode == 0 and total else None


def baseline_python() -> str:
    """The interpreter of the third-party baselines: `make bench` puts nfstream in a venv of its
    own (`.venv-baselines`; `LBM_BENCH_BASELINE_PYTHON` overrides), so the appliance's venv stays
    as deployed (nfstream brings pandas, which pyarrow imports whenever it is installed)."""
    own = ROOT / ".venv-baselines" / "bin" / "python"
    return os.environ.get("LBM_BENCH_BASELINE_PYTHON") or (
        str(own) if own.exists() else sys.executable
    )


def baseline_version(dist: str) -> str:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    p = subprocess.run([baseline_python(), "-c", code], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "MISSING (make bench installs it)"


def child(kind: str, *args: str, packets: int = 0, name: str = "") -> Run:
    python = baseline_python() if kind == "nfstream" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), kind, *args]
    return measure(name or kind, cmd, packets)


def tshark_fields(pcap: Path, packets: int) -> Run:
    fields = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.srcport", "udp.srcport"]
    fields += ["tcp.dstport", "udp.dstport", "ip.proto", "ipv6.nxt", "frame.len"]
    cmd = ["tshark", "-n", "-r", str(pcap), "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    run = measure("tshark conversation fields", cmd, packets)
    run.packets = int(run.out.get("stdout_lines", 0))
    return run


def tcpdump_read(pcap: Path, packets: int) -> Run:
    return measure(
        "tcpdump -r FILE -w /dev/null", ["tcpdump", "-r", str(pcap), "-w", "/dev/null"], packets
    )


def flows_of_data_dir(data: Path) -> dict[str, int]:
    """Packets per bidirectional 5-tuple (TCP and UDP) in the flow rows of a data dir."""
    sys.path.insert(0, str(ROOT))
    from store.metadata.reader import read_stream
    from store.paths import DataPaths

    cols = [
        "client_ip",
        "client_port",
        "server_ip",
        "server_port",
        "proto",
        "orig_pkts",
        "resp_pkts",
    ]
    flows: dict[str, int] = {}
    for r in read_stream(DataPaths(data), "flow").select(cols).to_pylist():
        if r["proto"] in ("tcp", "udp"):
            k = canon(
                r["client_ip"], r["client_port"], r["server_ip"], r["server_port"], r["proto"]
            )
            flows[k] = flows.get(k, 0) + r["orig_pkts"] + r["resp_pkts"]
    return flows


def canon(a: str, ap: int, b: str, bp: int, proto: str) -> str:
    x, y = (a, ap), (b, bp)
    lo, hi = (x, y) if x <= y else (y, x)
    return f"{proto} {lo[0]} {lo[1]} {hi[0]} {hi[1]}"


# ---- the child side ----------------------------------------------------------------------
def _inproc(pcap: str) -> dict[str, Any]:
    from appliance.policy.snapshot import Snapshot
    from capture.pipeline import Pipeline
    from capture.replay import replay
    from store.paths import DataPaths

    data = Path(tempfile.mkdtemp(prefix="lbm-bench-inproc-"))
    try:
        snap = Snapshot.build()
        t = time.perf_counter()
        pipe = Pipeline(
            paths=DataPaths(data),
            gateway="gw1",
            writer_name="replay",
            snapshot=lambda: snap,
            internal_networks=["10.0.0.0/8", "fd00::/8"],
        )
        s = replay([pcap], pipe)
        pipe.close()  # every row durable and published as Parquet
        return {"packets": s.packets, "seconds": time.perf_counter() - t, "flows": s.flows}
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _state_bytes() -> dict[str, Any]:
    """The flow table's per-flow state size, if it exposes one (else null)."""
    import importlib

    for mod in ("capture.flow.table", "capture.flow"):
        try:
            table_cls = getattr(importlib.import_module(mod), "FlowTable", None)
        except ImportError:
            continue
        if table_cls is None:
            continue
        try:
            table: Any = table_cls()
        except TypeError:  # a constructor that needs arguments: ask the class
            table = table_cls
        for name in ("state_bytes_per_flow", "bytes_per_flow"):
            v = getattr(table, name, None)
            v = v() if callable(v) else v
            if isinstance(v, int | float):
                return {"module": mod, "bytes": v}
        return {"module": mod, "bytes": None}
    return {"module": None, "bytes": None}


def _dpkt(pcap: str) -> dict[str, Any]:
    import dpkt

    flows: dict[str, int] = {}
    n = 0
    with open(pcap, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            n += 1
            try:
                ip = dpkt.ethernet.Ethernet(frame).data
            except (dpkt.UnpackError, IndexError):
                continue
            if isinstance(ip, dpkt.ip.IP):
                fam = socket.AF_INET
            elif isinstance(ip, dpkt.ip6.IP6):
                fam = socket.AF_INET6
            else:
                continue
            l4 = ip.data
            proto = (
                "tcp"
                if isinstance(l4, dpkt.tcp.TCP)
                else "udp"
                if isinstance(l4, dpkt.udp.UDP)
                else ""
            )
            if not proto:
                continue
            a, b = socket.inet_ntop(fam, ip.src), socket.inet_ntop(fam, ip.dst)
            k = canon(a, l4.sport, b, l4.dport, proto)
            flows[k] = flows.get(k, 0) + 1
    return {"packets": n, "flows": flows}


def _nfstream(pcap: str) -> dict[str, Any]:
    from nfstream import NFStreamer

    n_flows = pkts = 0
    for f in NFStreamer(source=pcap, statistical_analysis=False, n_dissections=0):
        n_flows += 1
        pkts += f.bidirectional_packets
    return {"packets": pkts, "flows": n_flows}


def main(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "launch":
        launch(rest[0], rest[1:])
    sys.path.insert(0, str(ROOT))
    jobs = {"inproc": _inproc, "dpkt": _dpkt, "nfstream": _nfstream}
    res = _state_bytes() if kind == "state-bytes" else jobs[kind](*rest)
    res["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])

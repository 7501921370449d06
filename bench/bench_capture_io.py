"""Benchmark: the producer side of `lbm capture replay` and its start-up, each against a
baseline measured in the same run (wall and user+sys CPU; the machine may be shared).

- decode: read + decode with the C pass for the common case (`fastpath.decode_common`)
  against the numpy path for every packet (`Decoder.fast = False`);
- ledger check before the first packet: the pre-key (size, first and last MiB) against the
  whole file's SHA-256 (what was computed before the first packet until now);
- the SHA-256 the ledger records, made from the regions the reader reads (`FileHash`, on
  the reader's thread), against read + decode and a second pass hashing the file by pread
  (what the child process that made it before did);
- start-up: `lbm capture replay` of a 1-packet capture in a fresh data dir, best of N, with
  the `--json` timing (`first_batch_s`: process start to the first batch in the pipeline,
  `close_s`: final flush and Parquet publication) against `python -c pass`.

    .venv/bin/python bench/bench_capture_io.py [--capture FILE] [--packets N] [--runs N]

Without --capture, a capture is generated with bench/bench_capture.py's generator.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - w, _cpu() - c


def _decode(path: str, fast: bool) -> None:
    from capture.decode import Decoder
    from capture.read.reader import open_capture

    dec = Decoder()
    dec.fast = fast
    for raw in open_capture(path).batches(65536):
        dec.decode(raw)


def _decode_hashed(path: str, from_reader: bool) -> None:
    """Read + decode with the ledger's SHA-256: from the reader's regions, or a second pass."""
    from capture.read.reader import open_capture
    from capture.read.replayed import FileHash, digest_fd

    reader = open_capture(path)
    fd = os.dup(reader.fileno())
    try:
        h = FileHash(fd)
        if from_reader:
            reader.tap = h.feed
            _decode_reader(reader)
            h.result()
        else:
            h.close()
            _decode_reader(reader)
            digest_fd(fd)
    finally:
        os.close(fd)


def _decode_reader(reader: Any) -> None:
    from capture.decode import Decoder

    dec = Decoder()
    for raw in reader.batches(65536):
        dec.decode(raw)


def _ledger_check(path: str, full: bool) -> None:
    from capture.read.replayed import digest_fd, edges

    with open(path, "rb") as fh:
        digest_fd(fh.fileno()) if full else edges(fh.fileno())


def _line(name: str, new: tuple[float, float], base: tuple[float, float], n: int) -> None:
    print(
        f"{name:<28} {n / new[0] / 1e6:6.2f} M pkt/s  wall {new[0]:6.2f} s  cpu {new[1]:6.2f} s"
        f"   baseline wall {base[0]:6.2f} s cpu {base[1]:6.2f} s"
        f"   ratio wall {base[0] / new[0]:5.2f}x  cpu {base[1] / new[1]:5.2f}x"
    )


def _one_packet(tmp: Path) -> Path:
    import dpkt

    tcp = dpkt.tcp.TCP(sport=40000, dport=443, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([192, 0, 2, 9]), p=6, data=tcp)
    ip.len = len(ip)
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))
    path = tmp / "one.pcap"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(head + struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame)
    return path


def _startup(tmp: Path, runs: int) -> None:
    lbm = [sys.executable, "-m", "appliance.cli.main"]
    data = tmp / "data"
    subprocess.run([*lbm, "--data-dir", str(data), "init"], check=True, capture_output=True)
    pristine = tmp / "pristine"
    shutil.copytree(data, pristine)
    one = _one_packet(tmp)
    best: dict[str, float] = {}
    for _ in range(runs):
        shutil.rmtree(data)
        shutil.copytree(pristine, data)
        t0 = time.time_ns()
        before = os.times()
        out = subprocess.run(
            [*lbm, "--data-dir", str(data), "capture", "replay", "--json", str(one)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "LBM_T0": str(t0)},
        )
        wall = (time.time_ns() - t0) / 1e9
        after = os.times()
        cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        timing = json.loads(out.stdout)["timing"]
        for k, v in {"wall": wall, "cpu": cpu, **timing}.items():
            best[k] = min(best.get(k, v), v)
    bare = min(
        _timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))[0]
        for _ in range(runs)
    )
    print(
        f"1-packet replay (best of {runs}): wall {best['wall']:.3f} s, cpu {best['cpu']:.3f} s, "
        f"first batch in the pipeline at {best['first_batch_s']:.3f} s, final flush and "
        f"publication {best['close_s']:.3f} s; python -c pass {bare:.3f} s "
        f"(ratio {best['wall'] / bare:.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--capture", help="an existing capture (else one is generated)")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lbm-bench-io-") as d:
        tmp = Path(d)
        if a.capture:
            path = a.capture
        else:
            import bench_capture

            path = str(tmp / "synth.pcap")
            bench_capture.generate(Path(path), a.packets, max(a.packets // 40, 1))
        from capture.decode import Decoder
        from capture.read.reader import open_capture

        n = sum(len(r) for r in open_capture(path).batches(65536))  # also warms the page cache
        Decoder()  # the C extension built and loaded before timing
        print(f"capture: {path}, {n} packets, {os.path.getsize(path) / 1e6:.0f} MB")
        _line("read + decode (C pass)", _timed(lambda: _decode(path, True)),
              _timed(lambda: _decode(path, False)), n)  # fmt: skip
        _line("ledger check (pre-key)", _timed(lambda: _ledger_check(path, False)),
              _timed(lambda: _ledger_check(path, True)), n)  # fmt: skip
        _line("read+decode+SHA-256 (tap)", _timed(lambda: _decode_hashed(path, True)),
              _timed(lambda: _decode_hashed(path, False)), n)  # fmt: skip
        _startup(tmp, a.runs)


if __name__ == "__main__":
    main()

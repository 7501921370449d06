"""Benchmark: archive throughput for a stream of large records vs a bare ChaCha20-Poly1305 pass.

Run: .venv/bin/python bench/bench_archive.py [--total-mib 512] [--record-mib 64] [--rounds 5]
                                             [--dir DIR ...]

Prints MB/s of `Archive.open_record/write/close` (age encryption, framing, ciphertext SHA-256,
disk writes, fsync, manifest) next to a bare ChaCha20-Poly1305 pass over the same bytes (the
same 1 MiB buffer, in 64 KiB chunks) measured in the same run, and the ratio (goal >= 0.5).
Each directory given (default: the system temp dir, and /dev/shm if present) is measured; the
bare pass, a single-threaded cipher + SHA-256 + write + fsync floor and the archive run are
interleaved round by round and the best of N is kept, so a busy machine weighs on all alike.
Then runs the archive in a fresh subprocess for two record sizes and prints each one's peak RSS:
it should be flat in the record size (the record is written in 1 MiB pieces from one buffer).

Where the time goes, per GiB, on the 2-vCPU VM this was tuned on: ChaCha20-Poly1305 ~0.33 s
(cryptography holds the GIL: two threads encrypt no faster than one), SHA-256 ~0.6 s (hashlib,
GIL released), the copy into the page cache ~0.2 s on ext4 and ~0.4 s on tmpfs, the hash
thread's read-back ~0.15 s. The calling thread does cipher + writes (0.65-0.75 s/GiB), the hash
thread read-back + SHA-256 (~0.8 s/GiB), so on two idle CPUs the ratio cannot pass ~0.4 (the
"bounds the ratio" line, from the threads' CPU times); with another process busy on one CPU it
falls towards the single-threaded ~0.2. The 0.5 goal needs a cheaper hash or more CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from store import agefile as age
from store import signing
from store.archive import Archive
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths

PIECE = 1 << 20


def _setup(root: Path) -> tuple[DataPaths, Archive]:
    paths = DataPaths(root)
    key = signing.create(paths, "bench")
    _, inv_public = age.generate()
    KeyStore(paths).create_authorisation_key("BENCH-1", [inv_public])
    return paths, Archive(paths, key, Clock(), segment_max_bytes=256 << 20)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_archive(root: Path, total: int, record: int, piece: bytes) -> tuple[float, float, float]:
    """Returns (wall seconds, CPU seconds of the calling thread, CPU seconds of the process)."""
    _, archive = _setup(root)
    cpu, thread = _cpu(), time.thread_time()
    start = time.perf_counter()
    written = 0
    while written < total:
        sink = archive.open_record("BENCH-1", "web", "p1", "2026-01-01T00:00:00Z", "body")
        done = 0
        while done < record:
            sink.write(piece)
            done += PIECE
        sink.close()
        written += record
    archive.close()
    return time.perf_counter() - start, time.thread_time() - thread, _cpu() - cpu


def run_bare(total: int, piece: bytes) -> float:
    aead = ChaCha20Poly1305(os.urandom(32))
    view = memoryview(piece)
    start = time.perf_counter()
    counter = 0
    for _ in range(total // PIECE):
        for off in range(0, PIECE, 65536):
            aead.encrypt(counter.to_bytes(12, "big"), view[off : off + 65536], None)  # type: ignore[arg-type]
            counter += 1
    return time.perf_counter() - start


def run_floor(root: Path, total: int, piece: bytes) -> float:
    """The unavoidable work of any durable, hashed archive: cipher + SHA-256 + write + fsync,
    single-threaded, into the same filesystem."""
    view = memoryview(piece)
    aead = ChaCha20Poly1305(os.urandom(32))
    sha = hashlib.sha256()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.perf_counter()
    counter = 0
    try:
        for _ in range(total // PIECE):
            for off in range(0, PIECE, 65536):
                sealed = aead.encrypt(
                    counter.to_bytes(12, "big"),
                    view[off : off + 65536],  # type: ignore[arg-type]
                    None,
                )
                sha.update(sealed)
                os.write(fd, sealed)
                counter += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def child(root: str, total: int, record: int) -> None:
    seconds = run_archive(Path(root), total, record, os.urandom(PIECE))[0]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def default_dirs() -> list[str]:
    dirs = [tempfile.gettempdir()]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        dirs.append("/dev/shm")
    return dirs


def measure(directory: str, total: int, record: int, rounds: int, piece: bytes) -> None:
    mib = total / (1 << 20)
    with tempfile.TemporaryDirectory(prefix="lbm-bench-", dir=directory) as tmp:
        times: dict[str, list[float]] = {"bare": [], "floor": [], "archive": []}
        cpu: list[tuple[float, float]] = []
        for i in range(rounds):  # interleaved, so a busy machine weighs on all three alike
            times["bare"].append(run_bare(total, piece))
            times["floor"].append(run_floor(Path(tmp) / f"f{i}", total, piece))
            shutil.rmtree(Path(tmp) / f"f{i}")
            wall, main_cpu, process_cpu = run_archive(Path(tmp) / f"a{i}", total, record, piece)
            times["archive"].append(wall)
            cpu.append((main_cpu, process_cpu - main_cpu))
            shutil.rmtree(Path(tmp) / f"a{i}")
        bare, floor, arch = (min(times[k]) for k in ("bare", "floor", "archive"))
        main_cpu, other_cpu = min(cpu)
    print(
        f"{mib:.0f} MiB in {record >> 20} MiB records, {os.cpu_count()} CPUs, best of "
        f"{rounds}, archive dir {directory}"
    )
    print(f"  bare ChaCha20-Poly1305 (memory only):        {mib / bare:8.1f} MiB/s")
    print(f"  cipher + SHA-256 + write + fsync (1 thread):  {mib / floor:8.1f} MiB/s")
    print(f"  archive (age, framing, SHA-256, disk, sign):  {mib / arch:8.1f} MiB/s")
    print(f"  ratio archive / bare cipher: {bare / arch:.2f}  (goal >= 0.5)")
    print(f"  ratio archive / cipher+hash+write floor: {floor / arch:.2f}")
    gib = total / (1 << 30)
    print(
        f"  archive CPU: calling thread {main_cpu / gib:.2f} s/GiB, other threads (hash) "
        f"{other_cpu / gib:.2f} s/GiB; bare cipher {bare / gib:.2f} s/GiB"
    )
    print(
        f"  on two otherwise idle CPUs the slower thread bounds the ratio at about "
        f"{bare / max(main_cpu, other_cpu):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-mib", type=int, default=512)
    parser.add_argument("--record-mib", type=int, default=64)
    parser.add_argument(
        "--dir",
        action="append",
        default=None,
        help="directory (filesystem) to archive into; repeatable; default: "
        "the system temp dir and /dev/shm",
    )
    parser.add_argument("--rounds", type=int, default=5, help="best of N interleaved rounds")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    total, record = args.total_mib << 20, args.record_mib << 20
    dirs = args.dir or default_dirs()
    piece = os.urandom(PIECE)  # the same bytes for the bare pass, the floor and the archive
    for directory in dirs:
        measure(directory, total, record, args.rounds, piece)
    for size_mib in () if args.no_memory else (16, args.total_mib):
        with tempfile.TemporaryDirectory(prefix="lbm-bench-", dir=dirs[0]) as tmp:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    tmp,
                    str(size_mib << 20),
                    str(size_mib << 20),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        result = json.loads(out.stdout)
        print(
            f"one {size_mib:5d} MiB record: peak RSS {result['peak_rss_mib']:6.1f} MiB ({dirs[0]})"
        )


if __name__ == "__main__":
    main()

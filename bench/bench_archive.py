"""Benchmark: archive throughput for a stream of large records vs a bare ChaCha20-Poly1305 pass.

Run: .venv/bin/python bench/bench_archive.py [--total-mib 512] [--record-mib 64]

Prints MB/s of `Archive.open_record/write/close` (age encryption, framing, ciphertext SHA-256,
disk writes, manifest) next to a bare ChaCha20-Poly1305 pass over the same bytes in 64 KiB
chunks measured in the same run, and the ratio (goal >= 0.5). Then runs the archive in a fresh
subprocess for two record sizes and prints each one's peak RSS: it should be flat in the record
size (the record is written in 1 MiB pieces from one reused buffer).
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


def run_archive(root: Path, total: int, record: int) -> float:
    _, archive = _setup(root)
    piece = os.urandom(PIECE)
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
    return time.perf_counter() - start


def run_bare(total: int) -> float:
    piece = os.urandom(PIECE)
    aead = ChaCha20Poly1305(os.urandom(32))
    view = memoryview(piece)
    start = time.perf_counter()
    counter = 0
    for _ in range(total // PIECE):
        for off in range(0, PIECE, 65536):
            aead.encrypt(counter.to_bytes(12, "big"), view[off:off + 65536], None)  # type: ignore[arg-type]
            counter += 1
    return time.perf_counter() - start


def run_floor(root: Path, total: int) -> float:
    """The unavoidable work of any durable, hashed archive: cipher + SHA-256 + write + fsync,
    single-threaded, into the same filesystem."""
    piece = os.urandom(PIECE)
    aead = ChaCha20Poly1305(os.urandom(32))
    sha = hashlib.sha256()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.perf_counter()
    counter = 0
    try:
        for _ in range(total // PIECE):
            for off in range(0, PIECE, 65536):
                sealed = aead.encrypt(counter.to_bytes(12, "big"), piece[off:off + 65536], None)
                sha.update(sealed)
                os.write(fd, sealed)
                counter += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def child(root: str, total: int, record: int) -> None:
    seconds = run_archive(Path(root), total, record)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total-mib", type=int, default=512)
    parser.add_argument("--record-mib", type=int, default=64)
    parser.add_argument("--dir", default=None,
                        help="directory (filesystem) to archive into; default: system temp")
    parser.add_argument("--rounds", type=int, default=5, help="best of N interleaved rounds")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    total, record = args.total_mib << 20, args.record_mib << 20
    mib = total / (1 << 20)
    with tempfile.TemporaryDirectory(prefix="lbm-bench-", dir=args.dir) as tmp:
        times: dict[str, list[float]] = {"bare": [], "floor": [], "archive": []}
        for i in range(args.rounds):  # interleaved, so a busy machine weighs on all three alike
            times["bare"].append(run_bare(total))
            times["floor"].append(run_floor(Path(tmp) / f"f{i}", total))
            shutil.rmtree(Path(tmp) / f"f{i}")
            times["archive"].append(run_archive(Path(tmp) / f"a{i}", total, record))
            shutil.rmtree(Path(tmp) / f"a{i}")
        bare, floor, arch = (min(times[k]) for k in ("bare", "floor", "archive"))
    print(f"{args.total_mib} MiB in {args.record_mib} MiB records, {os.cpu_count()} CPUs, "
          f"archive dir {args.dir or tempfile.gettempdir()}")
    print(f"bare ChaCha20-Poly1305 (memory only):        {mib / bare:8.1f} MiB/s")
    print(f"cipher + SHA-256 + write + fsync (1 thread):  {mib / floor:8.1f} MiB/s")
    print(f"archive (age, framing, SHA-256, disk, sign):  {mib / arch:8.1f} MiB/s")
    print(f"ratio archive / bare cipher: {bare / arch:.2f}  (goal >= 0.5)")
    print(f"ratio archive / cipher+hash+write floor: {floor / arch:.2f}")
    for size_mib in (16, args.total_mib):
        with tempfile.TemporaryDirectory(prefix="lbm-bench-", dir=args.dir) as tmp:
            out = subprocess.run(
                [sys.executable, __file__, "--child", tmp, str(size_mib << 20),
                 str(size_mib << 20)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
        print(f"one {size_mib:5d} MiB record: peak RSS {result['peak_rss_mib']:6.1f} MiB")


if __name__ == "__main__":
    main()

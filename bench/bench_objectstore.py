"""Benchmark: metadata on S3-compatible object storage vs local disk, in one run.

Run: .venv/bin/python bench/bench_objectstore.py [--write-rows N] [--search-rows N] [--days D]
Starts moto's standalone S3 server on loopback (tests/support/s3server.py, standing in for MinIO
or Ceph RGW), then:

1. Writes: N `web` rows (default 400,000, over 4 hours) given to `MetadataWriter.append_batch`
   in RecordBatches of 65,536 rows, then `flush()` (journal fsynced), `publish()` and, for the
   object store, `wait_uploaded()` (every object acknowledged by the store) and close; local
   disk with the same steps is the baseline. After one uncounted warm-up, local and object
   store alternate twice and the best of each counts. Rows/s of each, ratio printed; floor:
   the object store >= 0.5x local. Rows read back from the bucket are counted.
2. Searches: D days (default 30) of `web` rows (default 1,440,000: one file per hour, made as
   bench/bench_search.py makes them), the same files on local disk and in the bucket. A one-day
   search, as `lbm search` runs it: (a) one principal, person-level (Scope), (b) `--count-by
   host`; each best of 3, object store vs local (time, ratio). Also shown once: the same count
   over all D days on the object store (what the one-day range saved by partition pruning).

CPU: user+sys seconds of this process for each phase, and of the moto server process (from
/proc), as wall time on a shared 2-core machine says little alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from bench_search import _hour_table
from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import Query, Scope, run
from appliance.evidence.search_remote import open_metadata_root
from store.metadata import MetadataWriter
from store.objectstore import S3Settings, StoreRoot, StoreSettings
from store.paths import DataPaths
from store.schemas import schema

BUCKET = "lbm-bench"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SEED = 20261202
FLOOR = 0.5


class Cpu:
    """user+sys seconds of this process and of another (the S3 server) over a phase."""

    def __init__(self, other_pid: int | None) -> None:
        self.other = other_pid
        self.began = self._now()

    def _now(self) -> tuple[float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        other = 0.0
        if self.other is not None:
            fields = Path(f"/proc/{self.other}/stat").read_text().rsplit(")", 1)[1].split()
            other = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return me.ru_utime + me.ru_stime, other

    def spent(self) -> tuple[float, float]:
        now = self._now()
        return now[0] - self.began[0], now[1] - self.began[1]


def _s3(server: S3Server) -> S3Settings:
    return S3Settings(endpoint=server.endpoint, region=REGION, access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY)  # fmt: skip


def _paths(base: Path, metadata_root: str | None, s3: S3Settings) -> DataPaths:
    base.mkdir(parents=True)
    if metadata_root is None:
        return DataPaths(base)
    store = StoreSettings(metadata_root, str(base / "archive"), str(base / "keystore"), s3)
    return DataPaths(base, store=store)


def write_rows(paths: DataPaths, table: pa.Table) -> float:
    """Seconds to append, flush, publish and (object store) upload every row, then close."""
    began = time.perf_counter()
    with MetadataWriter("web", "bench", paths=paths, gateway="gw1") as writer:
        for batch in table.to_batches(max_chunksize=65_536):
            writer.append_batch(batch)
        writer.flush()
        writer.publish()
        if not writer.wait_uploaded(300):
            raise SystemExit("object store did not take the rows within 300 s")
    return time.perf_counter() - began


def write_phase(server: S3Server, tmp: Path, rows: int) -> bool:
    rng = np.random.default_rng(SEED)
    hours = 4
    table = pa.concat_tables(
        _hour_table(rng, START + dt.timedelta(hours=h), rows // hours, 5000, h)
        for h in range(hours)
    )
    s3 = _s3(server)
    server.make_bucket(BUCKET)
    results: dict[str, tuple[float, float, float]] = {}
    write_rows(_paths(tmp / "write-warmup", None, s3), table)  # imports, caches: not counted
    for n in range(2):  # alternated, best of two each: load on the machine hits both alike
        for label, root in (("local", None), ("s3", f"s3://{BUCKET}/write{n}")):
            cpu = Cpu(server.proc.pid if server.proc else None)
            seconds = write_rows(_paths(tmp / f"write-{label}{n}", root, s3), table)
            if label not in results or seconds < results[label][0]:
                results[label] = (seconds, *cpu.spent())
    remote = open_metadata_root(StoreSettings(f"s3://{BUCKET}/write1", "", "", s3))
    assert isinstance(remote, StoreRoot)
    stored = ds.dataset(remote.path("stream=web"), filesystem=remote.fs, format="parquet")
    count = stored.count_rows()
    if count != table.num_rows:
        raise SystemExit(f"bucket holds {count} rows, expected {table.num_rows}")
    local_s, s3_s = results["local"][0], results["s3"][0]
    ratio = local_s / s3_s
    print(f"write: {table.num_rows:,} web rows, append_batch + flush + publish (+ upload)")
    for label, (secs, me, moto) in results.items():
        extra = f", moto {moto:5.2f} s" if label == "s3" else ""
        print(f"  {label:7s} {secs:7.2f} s  {table.num_rows / secs:>10,.0f} rows/s  "
              f"cpu (user+sys) bench {me:5.2f} s{extra}")  # fmt: skip
    print(f"  object store / local (rows/s): {ratio:.2f}x (read back from the bucket: {count:,})")
    ok = ratio >= FLOOR
    print(f"  floor (>= {FLOOR}x local): {'PASS' if ok else 'FAIL'}")
    return ok


def _upload(root: StoreRoot, local: Path) -> None:
    files = sorted(local.rglob("*.parquet"))

    def put(file: Path) -> None:
        with root.fs.open_output_stream(root.path(str(file.relative_to(local)))) as out:
            out.write(file.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))


def best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def search_phase(server: S3Server, tmp: Path, rows: int, days: int) -> None:
    local = tmp / "search" / "metadata"
    rng = np.random.default_rng(SEED)
    per_hour = rows // (days * 24)
    began = time.perf_counter()
    for h in range(days * 24):
        at = START + dt.timedelta(hours=h)
        part = local / "stream=web" / f"date={at.date().isoformat()}" / f"hour={at.hour:02d}"
        part.mkdir(parents=True)
        table = _hour_table(rng, at, per_hour, 500, h)
        pq.write_table(table.cast(schema("web")), part / f"gw1__bench__{h:010d}.parquet",
                       compression="zstd")  # fmt: skip
    uri = f"s3://{BUCKET}/search"
    remote = open_metadata_root(StoreSettings(uri, "", "", _s3(server)))
    assert isinstance(remote, StoreRoot)
    _upload(remote, local)
    print(f"\nsearch: {per_hour * days * 24:,} web rows over {days} days, one file per hour "
          f"(made and uploaded in {time.perf_counter() - began:.1f} s)")  # fmt: skip
    day = START + dt.timedelta(days=days // 2)
    end = day + dt.timedelta(days=1)
    person = Query(stream="web", start=day, end=end, principal="p42", ref="BENCH-1",
                   reason="benchmark")  # fmt: skip
    scope = Scope("BENCH-1", "p42", Pseudonymiser(secrets.token_bytes(32)))
    count = Query(stream="web", start=day, end=end, count_by=("host",))
    cases: list[tuple[str, Query, Scope | None]] = [
        ("one principal, one day (person-level)", person, scope),
        ("--count-by host, one day", count, None),
    ]
    pid = server.proc.pid if server.proc else None
    for label, query, sc in cases:
        shown = []
        for where, root in (("local", local), ("s3", remote)):
            cpu = Cpu(pid)
            secs, table = best(lambda r=root, q=query, s=sc: run(r, q, s))  # type: ignore[misc]
            me, moto = cpu.spent()
            shown.append((where, secs, table.num_rows, me / 3, moto / 3))
        (_, l_s, l_n, _, _), (_, s_s, s_n, _, _) = shown
        assert l_n == s_n, (label, l_n, s_n)
        print(f"  {label}: {l_n} rows")
        for where, secs, _, me, moto in shown:
            extra = f", moto {moto:5.2f} s" if where == "s3" else ""
            print(f"    {where:5s} {secs:7.3f} s  cpu (user+sys, per run) bench {me:5.2f} s{extra}")
        print(f"    object store time / local time: {s_s / l_s:.1f}x")
    every = Query(stream="web", count_by=("host",))
    cpu = Cpu(pid)
    t0 = time.perf_counter()
    run(remote, every, None)
    all_s = time.perf_counter() - t0
    me, moto = cpu.spent()
    print(
        f"  --count-by host, all {days} days, object store (once): {all_s:.3f} s "
        f"(cpu bench {me:.2f} s, moto {moto:.2f} s): the one-day range reads 1/{days} of it"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-rows", type=int, default=400_000)
    parser.add_argument("--search-rows", type=int, default=1_440_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    with (
        tempfile.TemporaryDirectory(prefix="lbm-bench-objectstore-") as tmp,
        S3Server(log_dir=Path(tmp)) as server,
    ):
        ok = write_phase(server, Path(tmp), args.write_rows)
        search_phase(server, Path(tmp), args.search_rows, args.days)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

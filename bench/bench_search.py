"""Benchmark: one principal over one day through `lbm search`'s code path vs a full scan.

Run: .venv/bin/python bench/bench_search.py [--rows N] [--days D] [--cache DIR]
Generates N `web` rows (default 100 million) over D days (default 30) with pyarrow directly:
one file per hour in the store's layout (metadata/stream=web/date=D/hour=H/), the full web
schema, each file sorted by ts; principals, client IPs, proxy users and hosts drawn from pools.
The data is cached under DIR (default: the temp dir, keyed by the parameters) and reused; the
generation time is printed when it runs.

Then, in the same run, the same query (every column of one principal's rows on one day):
  - search: `appliance.evidence.search.run` with a person-level Scope, as `lbm search --stream
    web --principal P --from DAY --to DAY+1 --ref REF --reason ...` runs it (partition pruning,
    pseudonymised views, locked connection);
  - full scan (baseline): DuckDB over every file of the stream with the same WHERE clause and
    filter pushdown disabled, so every row is read and tested;
  - also shown: DuckDB over every file with its own pushdown (row-group statistics on the sorted
    ts), for comparison only.
Each is run 3 times; the best time counts. Floors: search < 2 s and >= 10x the full scan.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import Query, Scope, run
from store.schemas import schema

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOSTS = 5000
SEED = 20260301


def _pool(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


def _hour_table(
    rng: np.random.Generator, begins: dt.datetime, n: int, principals: int, file_no: int
) -> pa.Table:
    web = schema("web")
    hour_us = int(begins.timestamp() * 1_000_000)
    ts = np.sort(rng.integers(hour_us, hour_us + 3_600_000_000, n))
    who = pa.array(rng.integers(0, principals, n))
    host = pa.array(rng.zipf(1.3, n) % HOSTS)
    seq = pc.cast(pa.array(np.arange(n) // 4), pa.string())
    cols: dict[str, pa.Array] = {
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "uid": pc.binary_join_element_wise(f"C{file_no:05d}-", seq, ""),
        "gateway": pa.repeat(pa.scalar("gw1"), n),
        "principal": pc.take(_pool("p", principals), who),
        "client_ip": pc.take(_pool("10.1.", principals), who),
        "client_port": pa.array(rng.integers(1024, 65535, n), pa.uint16()),
        "server_ip": pc.take(_pool("198.51.", HOSTS), host),
        "server_port": pa.repeat(pa.scalar(443, pa.uint16()), n),
        "proxy_user": pc.take(_pool("user", principals), who),
        "scheme": pa.repeat(pa.scalar("https"), n),
        "host": pc.take(_pool("host", HOSTS), host),
        "method": pa.repeat(pa.scalar("GET"), n),
        "status": pa.array(rng.choice([200, 200, 200, 304, 404], n), pa.uint16()),
        "bytes_up": pa.array(rng.integers(200, 2000, n)),
        "bytes_down": pa.array(rng.integers(500, 500_000, n)),
        "decision": pa.repeat(pa.scalar("passed"), n),
        "refs": pa.array([[]] * n, pa.list_(pa.string())),
        "record_ids": pa.array([[]] * n, pa.list_(pa.string())),
    }
    arrays = [cols.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in web]
    return pa.Table.from_arrays(arrays, schema=web)


def generate(root: Path, rows: int, days: int, principals: int) -> None:
    done = root / "COMPLETE"
    if done.exists():
        print(f"data: cached at {root}")
        return
    rng = np.random.default_rng(SEED)
    hours = days * 24
    per_hour = rows // hours
    began = time.perf_counter()
    for h in range(hours):
        begins = START + dt.timedelta(hours=h)
        part = root / "stream=web" / f"date={begins.date().isoformat()}" / f"hour={begins.hour:02d}"
        part.mkdir(parents=True, exist_ok=True)
        n = per_hour + (rows - per_hour * hours if h == hours - 1 else 0)
        table = _hour_table(rng, begins, n, principals, h)
        pq.write_table(table, part / f"gw1__bench__{h:010d}.parquet", compression="zstd")
        if h % 24 == 23:
            print(f"  generated day {h // 24 + 1}/{days} ({time.perf_counter() - began:.0f} s)")
    done.write_text(f"{rows} {days} {principals}\n")
    print(f"data: generated {rows:,} rows in {hours} files in {time.perf_counter() - began:.1f} s")


def best(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    times = []
    count = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - t0)
    return min(times), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--principals", type=int, default=5000)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    key = f"lbm-bench-search-{args.rows}-{args.days}-{args.principals}-{SEED}"
    root = (args.cache or Path(tempfile.gettempdir()) / key) / "metadata"
    generate(root, args.rows, args.days, args.principals)

    principal = "p42"
    day = START + dt.timedelta(days=args.days // 2)
    query = Query(stream="web", principal=principal, start=day, end=day + dt.timedelta(days=1),
                  ref="BENCH-1", reason="benchmark")  # fmt: skip
    scope = Scope("BENCH-1", principal, Pseudonymiser(secrets.token_bytes(32)))
    search_s, search_rows = best(lambda: run(root, query, scope).num_rows)

    where = (f"principal = '{principal}' AND ts >= TIMESTAMPTZ '{day.isoformat()}' "
             f"AND ts < TIMESTAMPTZ '{(day + dt.timedelta(days=1)).isoformat()}'")  # fmt: skip
    sql = (f"SELECT * FROM read_parquet('{root}/stream=web/*/*/*.parquet', "
           f"hive_partitioning = true) WHERE {where} ORDER BY ts")  # fmt: skip

    def duck(pushdown: bool) -> Callable[[], int]:
        def go() -> int:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            if not pushdown:
                con.execute("SET disabled_optimizers = 'filter_pushdown'")
            n = con.sql(sql).to_arrow_table().num_rows
            con.close()
            return n

        return go

    scan_s, scan_rows = best(duck(False), repeat=2)
    stats_s, stats_rows = best(duck(True))
    assert search_rows == scan_rows == stats_rows, (search_rows, scan_rows, stats_rows)
    ratio = scan_s / search_s
    print(f"rows: {args.rows:,} over {args.days} days; one principal, one day: {search_rows} rows")
    print(f"search (lbm search path):        {search_s:8.3f} s")
    print(f"full scan (baseline):            {scan_s:8.3f} s   ratio {ratio:6.1f}x")
    print(f"DuckDB, all files, own pushdown: {stats_s:8.3f} s   ratio {stats_s / search_s:6.1f}x")
    ok = search_s < 2.0 and ratio >= 10
    print(f"floors (< 2 s, >= 10x the full scan): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

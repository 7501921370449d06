"""MetadataWriter: round trips, refusals, hive layout, DuckDB visibility, concurrency,
compaction of own files only, and recovery of interrupted rounds and compactions."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from store import SchemaError, StoreError, roundfiles
from store import compact as cp
from store.clock import Clock
from store.fsutil import atomic_write
from store.journal import Journal, encode_batches
from store.metadata import MetadataWriter, QueueFull, read_stream
from store.paths import DataPaths
from store.schemas import STREAMS, schema

T0 = datetime(2026, 3, 1, 9, 58, tzinfo=UTC)
NAME_RE = re.compile(r"^gw1__proxy__\d{10}\.parquet$")


def sample_value(field: pa.Field, i: int) -> Any:
    t = field.type
    if field.name == "ts":
        return T0 + timedelta(seconds=37 * i)
    if pa.types.is_list(t):
        return (
            [f"{field.name}-{i}-a", f"{field.name}-{i}-b"]
            if pa.types.is_string(t.value_type)
            else [1.5 * i, 2.0]
        )
    if pa.types.is_string(t):
        return f"{field.name}-{i}"
    if pa.types.is_boolean(t):
        return i % 2 == 0
    if pa.types.is_floating(t):
        return i / 4
    if pa.types.is_integer(t):
        return i % 200
    raise AssertionError(f"no sample for {t}")


def full_rows(stream: str, n: int, prefix: str = "") -> list[dict[str, Any]]:
    sch = schema(stream)
    rows = []
    for i in range(n):
        row = {f.name: sample_value(f, i) for f in sch if f.name != "gateway"}
        row["uid"] = f"{prefix}{stream}-{i}"
        rows.append(row)
    return rows


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    return DataPaths(tmp_path / "data")


def writer(paths: DataPaths, stream: str = "web", name: str = "proxy", **kw: Any) -> MetadataWriter:
    return MetadataWriter(stream, name, paths=paths, gateway="gw1", **kw)


@pytest.mark.parametrize("stream", STREAMS)
def test_round_trip_every_column(paths: DataPaths, stream: str) -> None:
    rows = full_rows(stream, 50)
    with writer(paths, stream, name=f"rt-{stream}") as w:
        for row in rows:
            w.append(row)
    table = read_stream(paths, stream).sort_by("ts")
    assert table.schema.names == schema(stream).names
    got = table.to_pylist()
    assert len(got) == 50
    for want, have in zip(rows, got, strict=True):
        assert have == {**want, "gateway": "gw1"}


def test_missing_columns_are_null_and_lists_empty(paths: DataPaths) -> None:
    with writer(paths) as w:
        w.append({"ts": T0, "uid": "C1", "host": "example.org"})
        w.append_batch({"ts": [T0], "uid": ["C2"]})
    got = {r["uid"]: r for r in read_stream(paths, "web").to_pylist()}
    assert got["C1"]["host"] == "example.org" and got["C1"]["principal"] is None
    for uid in ("C1", "C2"):
        assert got[uid]["refs"] == [] and got[uid]["record_ids"] == []
        assert got[uid]["gateway"] == "gw1"


def test_refuses_unknown_and_content_columns_naming_the_column(paths: DataPaths) -> None:
    canary = "CANARY-7f3a9e"
    with writer(paths, "email", name="smtp") as w:
        with pytest.raises(SchemaError) as err:
            w.append({"ts": T0, "uid": "M1", "subject": canary})
        assert "'subject'" in str(err.value) and "'email'" in str(err.value)
        assert "content-like" in str(err.value) and canary not in str(err.value)
        with pytest.raises(SchemaError, match="unknown column 'flavour'"):
            w.append({"ts": T0, "uid": "M1", "flavour": canary})
        with pytest.raises(SchemaError, match="'body'"):
            w.append_batch({"ts": [T0], "uid": ["M2"], "body": [canary]})
        with pytest.raises(SchemaError, match="'ts' is required"):
            w.append({"uid": "M3"})
        with pytest.raises(SchemaError, match="'gateway' is set by the writer"):
            w.append({"ts": T0, "uid": "M4", "gateway": "other"})
        w.append({"ts": T0, "uid": "ok"})
    assert read_stream(paths, "email").column("uid").to_pylist() == ["ok"]
    for path in paths.root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes()


def test_wrong_type_is_refused_at_flush_without_the_value(paths: DataPaths) -> None:
    canary = "CANARY-not-a-port"
    with writer(paths) as w:
        w.append({"ts": T0, "uid": "good-1", "status": 200})
        w.append({"ts": T0, "uid": "bad", "client_port": canary})
        w.append({"ts": T0, "uid": "good-2", "status": 404})
        with pytest.raises(SchemaError) as err:
            w.flush()
        assert "'client_port'" in str(err.value) and canary not in str(err.value)
        w.flush()  # the refusal is reported once
    assert sorted(read_stream(paths, "web").column("uid").to_pylist()) == ["good-1", "good-2"]


def test_append_batch_forms_and_errors(paths: DataPaths) -> None:
    rows = full_rows("flow", 20)
    table = pa.Table.from_pylist(rows)
    with writer(paths, "flow", name="capture-eth1") as w:
        w.append_batch(table.slice(0, 10))
        w.append_batch(table.slice(10).to_batches()[0])
        w.append_batch({"ts": [T0, T0], "uid": ["x1", "x2"], "orig_bytes": [1, 2]})
        with pytest.raises(SchemaError, match="differ in length"):
            w.append_batch({"ts": [T0, T0], "uid": ["y"]})
        with pytest.raises(SchemaError, match=r"'orig_pkts'.*does not convert"):
            w.append_batch({"ts": [T0], "uid": ["y"], "orig_pkts": ["many"]})
        with pytest.raises(SchemaError, match="'uid' is required"):
            w.append_batch({"ts": [T0]})
    got = read_stream(paths, "flow")
    assert got.num_rows == 22
    assert sorted(got.column("uid").to_pylist()) == sorted([r["uid"] for r in rows] + ["x1", "x2"])


def test_hive_layout_file_names_and_sequence_across_restarts(paths: DataPaths) -> None:
    with writer(paths) as w:
        w.append({"ts": datetime(2026, 3, 1, 9, 59, 59, tzinfo=UTC), "uid": "a"})
        w.append({"ts": datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC), "uid": "b"})
        w.append({"ts": datetime(2026, 3, 2, 0, 30, tzinfo=UTC), "uid": "c"})
    with writer(paths) as w:
        w.append({"ts": datetime(2026, 3, 1, 9, 10, tzinfo=UTC), "uid": "d"})
    files = sorted(paths.metadata.rglob("*.parquet"))
    by_dir: dict[str, list[str]] = {}
    for p in files:
        key = str(p.parent.relative_to(paths.metadata))
        by_dir[key] = sorted(by_dir.get(key, []) + pq.read_table(p).column("uid").to_pylist())
    assert by_dir == {
        "stream=web/date=2026-03-01/hour=09": ["a", "d"],
        "stream=web/date=2026-03-01/hour=10": ["b"],
        "stream=web/date=2026-03-02/hour=00": ["c"],
    }
    names = [p.name for p in files]
    assert all(NAME_RE.match(n) for n in names)
    seqs = sorted(int(n.split("__")[2].split(".")[0]) for n in names)
    assert seqs == [1, 2, 3, 4]  # the restart continued the sequence
    meta = pq.read_metadata(files[0]).metadata  # Parquet key-value metadata of the file
    assert meta[b"lbm.writer"] == b"proxy" and meta[b"lbm.gateway"] == b"gw1"
    assert meta[b"lbm.schema_version"] == b"1"
    assert pq.read_schema(files[0]).field("host").metadata[b"description"]


def test_duckdb_sees_rows_within_seconds_and_ignores_hidden_files(paths: DataPaths) -> None:
    glob = str(paths.metadata / "stream=web" / "**" / "*.parquet")
    con = duckdb.connect()
    with writer(paths, parquet_interval=0.5, flush_interval=0.2) as w:
        for i in range(100):
            w.append({"ts": T0, "uid": f"u{i}", "host": "example.org"})
        hour = paths.metadata / "stream=web" / "date=2026-03-01" / "hour=09"
        deadline = time.monotonic() + 20
        count = 0
        while time.monotonic() < deadline:
            if any(hour.glob("*.parquet")):
                count = con.execute(
                    f"select count(*) from read_parquet('{glob}', hive_partitioning=true)"
                ).fetchall()[0][0]
                if count == 100:
                    break
            time.sleep(0.1)
        assert count == 100
        # Leftover hidden names (temps, replaced inputs) are invisible to both readers. (DuckDB's
        # glob does match dot-files ending in .parquet: that is why ours never end so.)
        (hour / ".gw1__proxy__0000000099.parquet.tmp").write_bytes(b"PAR1 torn")
        (hour / ".gw1__proxy__0000000098.parquet.replaced").write_bytes(b"PAR1 torn")
        rel = con.execute(
            f"select hour, date, count(*) from read_parquet('{glob}', "
            f"hive_partitioning=true) group by all"
        ).fetchall()
        assert rel == [("09", datetime(2026, 3, 1).date(), 100)]  # hour stays text: "09"
        dataset = ds.dataset(paths.metadata / "stream=web", format="parquet", partitioning="hive")
        assert dataset.to_table().num_rows == 100
    # The writer's next start removes its own hidden leftovers.
    with writer(paths):
        pass
    assert not (hour / ".gw1__proxy__0000000099.parquet.tmp").exists()
    assert not (hour / ".gw1__proxy__0000000098.parquet.replaced").exists()


def test_threads_and_asyncio_append_concurrently(paths: DataPaths) -> None:
    w = writer(paths, max_batch=500, queue_limit=2000)

    def worker(k: int) -> None:
        for i in range(1500):
            w.append({"ts": T0, "uid": f"t{k}-{i}"})
            if i % 400 == 0:
                w.flush()

    async def producer(k: int) -> None:
        for i in range(1500):
            w.append({"ts": T0, "uid": f"a{k}-{i}"})
            if i % 100 == 0:
                await asyncio.sleep(0)
        await w.aflush()

    async def run_async() -> None:
        await asyncio.gather(*(producer(k) for k in range(4)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    asyncio.run(run_async())
    for t in threads:
        t.join()
    w.close()
    uids = read_stream(paths, "web").column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 10 * 1500


def test_queue_full_blocks_then_raises(paths: DataPaths) -> None:
    with writer(paths, queue_limit=10, block_timeout=0.3, flush_interval=60) as w:
        with w._engine.io_lock:  # storage "stuck": the engine cannot drain
            for i in range(10):
                w.append({"ts": T0, "uid": f"q{i}"})
            start = time.monotonic()
            with pytest.raises(QueueFull, match="queue full"):
                w.append({"ts": T0, "uid": "q10"})
            assert time.monotonic() - start >= 0.25
        w.append({"ts": T0, "uid": "q11"})  # drained now: room again
    assert read_stream(paths, "web").num_rows == 11


def test_two_streams_one_writer_name_share_the_journal(paths: DataPaths) -> None:
    flow = writer(paths, "flow", name="capture-eth1")
    dns = writer(paths, "dns", name="capture-eth1")
    with pytest.raises(StoreError, match="already open"):
        writer(paths, "dns", name="capture-eth1")
    flow.append({"ts": T0, "uid": "f1"})
    dns.append({"ts": T0, "uid": "d1", "qname": "example.org"})
    flow.close()
    dns.append({"ts": T0, "uid": "d2"})
    dns.close()
    assert read_stream(paths, "flow").num_rows == 1
    assert read_stream(paths, "dns").num_rows == 2
    assert [p.name for p in paths.journal.iterdir()] == ["capture-eth1.journal"]


def test_second_process_with_same_writer_name_fails_clearly(paths: DataPaths) -> None:
    with writer(paths) as w:
        w.append({"ts": T0, "uid": "x"})
        code = (
            "import sys; from pathlib import Path; from store.paths import DataPaths;"
            "from store.metadata import MetadataWriter;"
            f"MetadataWriter('web', 'proxy', paths=DataPaths(Path({str(paths.root)!r})),"
            "gateway='gw1')"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert proc.returncode != 0
    assert "is locked: another process is running metadata writer 'proxy'" in proc.stderr


@pytest.mark.parametrize("bad", ["Proxy", "a__b", "", "-x", "_hidden"])
def test_bad_writer_and_gateway_ids(paths: DataPaths, bad: str) -> None:
    with pytest.raises(StoreError, match="writer id"):
        MetadataWriter("web", bad, paths=paths, gateway="gw1")
    with pytest.raises(StoreError, match="gateway id"):
        MetadataWriter("web", "proxy", paths=paths, gateway=bad)


def _own(paths: DataPaths, hour_dir: Path, gateway: str, name: str) -> list[str]:
    return sorted(
        p.name for p in hour_dir.glob("*.parquet") if p.name.startswith(f"{gateway}__{name}__")
    )


def test_compaction_merges_only_own_files_of_closed_hours(paths: DataPaths) -> None:
    clock = Clock(fixed=T0)
    hour = paths.metadata / "stream=web" / "date=2026-03-01" / "hour=09"
    # Other writers' files in the same hour: a name sharing a prefix, another gateway.
    for name, gateway in (("proxy-b", "gw1"), ("proxy", "gw2")):
        with MetadataWriter("web", name, paths=paths, gateway=gateway) as other:
            other.append({"ts": T0, "uid": f"{gateway}-{name}-1"})
        with MetadataWriter("web", name, paths=paths, gateway=gateway) as other:
            other.append({"ts": T0, "uid": f"{gateway}-{name}-2"})
    others_before = {
        n: (hour / n).read_bytes()
        for n in _own(paths, hour, "gw1", "proxy-b") + _own(paths, hour, "gw2", "proxy")
    }
    w = writer(paths, clock=clock, compact_delay=300)
    for i in range(3):
        w.append({"ts": T0 + timedelta(seconds=i), "uid": f"own-{i}"})
        w.publish()
    w.append({"ts": T0 + timedelta(hours=1), "uid": "own-next-hour"})
    w.publish()
    inputs = _own(paths, hour, "gw1", "proxy")
    assert len(inputs) == 3
    assert w.compact() == 0  # 09:58: hour 09 is still open
    clock.set(datetime(2026, 3, 1, 10, 5, 1, tzinfo=UTC))
    assert w.compact() == 1
    merged = _own(paths, hour, "gw1", "proxy")
    assert len(merged) == 1 and merged[0] not in inputs
    replaced = json.loads(pq.read_schema(hour / merged[0]).metadata[b"lbm.replaces"])
    assert replaced == inputs
    assert {n: (hour / n).read_bytes() for n in others_before} == others_before
    # A late row for the closed hour makes a new file; compaction may run again.
    w.append({"ts": T0, "uid": "own-late"})
    w.publish()
    assert len(_own(paths, hour, "gw1", "proxy")) == 2
    assert w.compact() == 1
    assert len(_own(paths, hour, "gw1", "proxy")) == 1
    w.close()
    uids = read_stream(paths, "web").column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 3 + 1 + 1 + 4
    assert not [p for p in hour.iterdir() if p.name.startswith(".")]


def test_interrupted_compaction_is_finished_on_start_without_duplicates(paths: DataPaths) -> None:
    with writer(paths) as w:
        for i in range(3):
            w.append({"ts": T0, "uid": f"c{i}"})
            w.publish()
    hour = paths.metadata / "stream=web" / "date=2026-03-01" / "hour=09"
    inputs = [hour / n for n in _own(paths, hour, "gw1", "proxy")]
    final = hour / cp.FileName("gw1", "proxy", 99).name
    # Crash state: merged file written hidden and recorded, one input already hidden.
    merged = pa.concat_tables([pq.read_table(p) for p in inputs])
    roundfiles.write_temp(final, merged)
    atomic_write(
        paths.journal / "proxy.compact",
        json.dumps(
            {
                "merged": str(final.relative_to(paths.metadata)),
                "inputs": [str(p.relative_to(paths.metadata)) for p in inputs],
            }
        ).encode(),
    )
    inputs[0].rename(hour / f".{inputs[0].name}.replaced")
    with writer(paths):
        pass
    assert [p.name for p in hour.iterdir()] == [final.name]
    assert sorted(read_stream(paths, "web").column("uid").to_pylist()) == ["c0", "c1", "c2"]
    assert not (paths.journal / "proxy.compact").exists()


def test_interrupted_round_is_rolled_forward_not_replayed_twice(paths: DataPaths) -> None:
    with writer(paths):
        pass
    # Crash state: rows journaled, the round's files written hidden and committed, the
    # journal not yet emptied.
    sch = schema("web")
    batch = pa.RecordBatch.from_pylist(
        [
            {"ts": T0, "uid": f"r{i}", "gateway": "gw1", "refs": [], "record_ids": []}
            for i in range(5)
        ],
        schema=sch,
    )
    journal = Journal(paths.journal / "proxy.journal")
    journal.read()
    journal.reset()
    upto = journal.append([encode_batches("web", [batch], sch)])
    late = pa.RecordBatch.from_pylist(
        [{"ts": T0, "uid": "after-round", "gateway": "gw1", "refs": [], "record_ids": []}],
        schema=sch,
    )
    journal.append([encode_batches("web", [late], sch)])  # not part of the round
    final = (
        cp.hour_dir(paths.metadata, "web", int(T0.timestamp()) // 3600)
        / cp.FileName("gw1", "proxy", 7).name
    )
    roundfiles.write_temp(final, pa.Table.from_batches([batch]))
    atomic_write(
        paths.journal / "proxy.commit",
        json.dumps(
            {
                "generation": journal.generation.hex(),
                "upto": upto,
                "files": [str(final.relative_to(paths.metadata))],
            }
        ).encode(),
    )
    journal.close()
    with writer(paths) as w:
        w.append({"ts": T0, "uid": "new"})
    uids = sorted(read_stream(paths, "web").column("uid").to_pylist())
    assert uids == sorted([f"r{i}" for i in range(5)] + ["after-round", "new"])
    assert final.exists() and not (paths.journal / "proxy.commit").exists()


def test_journal_from_an_older_schema_version_replays(paths: DataPaths) -> None:
    with writer(paths):
        pass
    # A frame written by an earlier version: a column since removed, one not yet added.
    old = pa.schema(
        [
            ("ts", pa.timestamp("us", tz="UTC")),
            ("uid", pa.string()),
            ("gateway", pa.string()),
            ("host", pa.string()),
            ("retired_col", pa.string()),
            ("status", pa.int64()),
        ]
    )
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "ts": T0,
                "uid": "old-1",
                "gateway": "gw1",
                "host": "example.org",
                "retired_col": "x",
                "status": 301,
            }
        ],
        schema=old,
    )
    journal = Journal(paths.journal / "proxy.journal")
    journal.read()
    journal.append([encode_batches("web", [batch], old)])
    journal.close()
    with writer(paths):
        pass
    rows = read_stream(paths, "web").to_pylist()
    assert len(rows) == 1
    assert rows[0]["uid"] == "old-1" and rows[0]["status"] == 301
    assert rows[0]["method"] is None and "retired_col" not in rows[0]
    assert rows[0]["refs"] == [] and rows[0]["record_ids"] == []


def test_background_compaction_and_closed_writer(paths: DataPaths) -> None:
    w = writer(paths, compact_delay=0, compact_interval=0.1)
    hour = paths.metadata / "stream=web" / "date=2026-03-01" / "hour=09"
    for i in range(3):
        w.append({"ts": T0, "uid": f"b{i}"})
        w.publish()
    deadline = time.monotonic() + 20
    # != 1, not > 1: compaction hides its inputs a moment before the merged file appears
    while len(_own(paths, hour, "gw1", "proxy")) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_own(paths, hour, "gw1", "proxy")) == 1  # the hour (long closed) was compacted
    w.close()
    with pytest.raises(StoreError, match="is closed"):
        w.append({"ts": T0, "uid": "too-late"})
    assert sorted(read_stream(paths, "web").column("uid").to_pylist()) == ["b0", "b1", "b2"]


def test_split_by_hour_at_the_edges_of_an_hour() -> None:
    """Rows go to the hour their `ts` falls in, to the microsecond, in hour order; a table
    within one hour is returned as it is (no copy)."""
    base = datetime(2026, 3, 1, 10, tzinfo=UTC)
    times = [
        base + timedelta(minutes=30),
        base - timedelta(microseconds=1),
        base,
        base + timedelta(hours=14),
        base + timedelta(hours=1) - timedelta(microseconds=1),
    ]
    table = pa.table({"ts": pa.array(times, pa.timestamp("us", tz="UTC")), "i": range(5)})
    got = [(h, t.column("i").to_pylist()) for h, t in cp.split_by_hour(table)]
    h10 = int(base.timestamp()) // 3600
    assert got == [(h10 - 1, [1]), (h10, [0, 2, 4]), (h10 + 14, [3])]
    one = table.slice(0, 1)
    assert cp.split_by_hour(one) == [(h10, one)] and cp.split_by_hour(one)[0][1] is one
    assert cp.split_by_hour(table.slice(0, 0)) == []


def test_split_by_hour_over_two_hours_does_not_import_pyarrow_compute() -> None:
    """A round spanning an hour's end (a replay's last round, on the main thread while the
    other core is idle) is split without `pyarrow.compute`, whose import alone took 20 ms;
    each hour's rows in their order, strings and lists kept."""
    script = (
        "import sys\n"
        "import numpy as np, pyarrow as pa\n"
        "from store import compact\n"
        "n = 5000\n"
        "us = (np.arange(n) % 2) * 3_600_000_000 + 1_700_000_000_000_000\n"
        "t = pa.table({'ts': pa.array(us, pa.timestamp('us', tz='UTC')),\n"
        "              'uid': [f'C{i}' for i in range(n)],\n"
        "              'refs': [[str(i)] if i % 7 == 0 else [] for i in range(n)]})\n"
        "parts = compact.split_by_hour(t)\n"
        "assert [p.num_rows for _, p in parts] == [2500, 2500]\n"
        "assert parts[1][0] == parts[0][0] + 1\n"
        "assert parts[0][1].column('uid').to_pylist() == [f'C{i}' for i in range(0, n, 2)]\n"
        "assert parts[1][1].column('refs').to_pylist()[:4] == [[], [], [], ['7']]\n"
        "print('pyarrow.compute' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"

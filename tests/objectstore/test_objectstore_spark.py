"""PySpark (local mode, Debian's Java runtime) reads the same hive-partitioned Parquet that
`lbm search` reads, and finds the same rows for a principal over a day (docs/query.md).

Spark discovers the `date=`/`hour=` partitions itself (`spark.read.parquet(root/stream=web)`),
reads the schema's UTC timestamps, lists and unsigned integers as its own types, and prunes the
other day's partition from the filter on `date`. One small Spark session per module: `local[1]`,
no UI, 512 MiB for the driver, bound to loopback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lbm_testing import Lbm
from search_data import DAY1, FEED, REF, SUBJECT, write_metadata

from store import agefile as age
from store import schemas
from store.metadata import MetadataWriter
from store.paths import DataPaths

if shutil.which("java") is None:  # .ci/run installs default-jre-headless
    pytest.skip("no java runtime here: PySpark needs one (apt install default-jre-headless)",
                allow_module_level=True)  # fmt: skip
pyspark_sql = pytest.importorskip(
    "pyspark.sql", reason="pyspark is a dev extra (pip install .[dev])"
)

TS_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"


@pytest.fixture(scope="module")
def lbm(tmp_path_factory: pytest.TempPathFactory) -> Lbm:
    """REF (subject p1) assigned to inv1 (login `root`); rows of two gateways in DATA/metadata."""
    tmp = tmp_path_factory.mktemp("spark")
    runner = Lbm(tmp / "data")
    runner("init", check=True)
    config = runner.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    assert runner.inproc("keys", "investigator", "add", "inv1", age.generate()[1],
                         "--principal", "p900", "--login", "root").returncode == 0  # fmt: skip
    runner.grant(REF, SUBJECT, investigator="inv1")
    (tmp / "feed.csv").write_text(FEED)
    assert runner.inproc("identity", "import", str(tmp / "feed.csv")).returncode == 0
    paths = DataPaths(runner.data_dir)
    write_metadata(paths)  # gw1
    gw2 = MetadataWriter("web", "proxy", paths=paths, gateway="gw2")
    gw2.append_batch({"ts": [DAY1 + dt.timedelta(hours=23, minutes=59, seconds=59,
                                                  microseconds=123456)],
                      "uid": ["G1"], "principal": [SUBJECT], "client_ip": ["10.0.0.1"],
                      "client_port": [50123], "port": [443], "status": [200],
                      "host": ["late.example"], "refs": [[REF]], "record_ids": [[]],
                      "bytes_up": [12], "duration": [0.25]})  # fmt: skip
    gw2.close()
    return runner


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        pyspark_sql.SparkSession.builder.master("local[1]")
        .appName("lbm-query-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _normal(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def test_spark_finds_the_same_rows_as_lbm_search_for_a_principal_over_a_day(
    lbm: Lbm, spark: Any
) -> None:
    day_args = ("--from", "2026-03-01", "--to", "2026-03-02")
    who = ("--principal", SUBJECT, "--ref", REF, "--reason", "spark cross-check")
    result = lbm("search", "--stream", "web", *day_args, *who, "--json")
    assert result.returncode == 0, result.stderr
    searched = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["gateway"], r["host"]) for r in searched} == {
        ("gw1", "evidence.example"),
        ("gw2", "late.example"),
    }

    root = str(lbm.data_dir / "metadata")
    web = spark.read.parquet(root + "/stream=web")  # partition discovery: date, hour
    assert {f.name: f.dataType.simpleString() for f in web.schema.fields if f.name in
            ("ts", "date", "hour", "refs", "client_port", "status")} == {
        "ts": "timestamp", "date": "date", "hour": "int", "refs": "array<string>",
        "client_port": "int", "status": "int",
    }  # fmt: skip
    day = web.where(f"date = DATE '{DAY1.date()}' AND principal = '{SUBJECT}'")
    pruned = day._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [isnotnull(date" in pruned and "= 2026-03-01" in pruned
    picked = day.selectExpr(
        *[
            f'date_format(ts, "{TS_FORMAT}") AS ts' if c == "ts" else f"`{c}`"
            for c in schemas.columns("web")
        ]
    ).orderBy("ts")
    rows = [r.asDict(recursive=True) for r in picked.collect()]
    for row in rows:  # `lbm search --json` writes whole seconds as ...:00Z
        row["ts"] = row["ts"].replace(".000000Z", "Z")
    assert [_normal(r) for r in rows] == [_normal(r) for r in searched]
    assert rows[-1]["ts"] == "2026-03-01T23:59:59.123456Z"  # microseconds, UTC, both sides

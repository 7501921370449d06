"""`lbm search` over an object-store metadata root (`[store] metadata_root = "s3://..."`).

moto's standalone S3 server (tests/support/s3server.py) stands in for MinIO or Ceph RGW. Two
gateways' hive-partitioned Parquet (published by their own MetadataWriters, configured with the
bucket as metadata root) share one bucket prefix; a THIRD data dir configured with the
bucket as its metadata root must see each gateway's rows exactly once, with the same output as
the same search over a local root holding the same files. The range prunes partitions (a corrupt
object on another day is never opened), the sandbox stays as strict (no S3 access, no secrets,
the registered datasets out of `--sql`'s reach), and an unreachable store fails the search
clearly instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs
import pytest
from lbm_testing import Lbm
from s3server import ACCESS_KEY, REGION, SECRET_KEY, Outage, S3Server, s3_store_config, set_store
from search_data import DAY1, DAY2, FEED, REF, SUBJECT, THIRD_PARTY, email_rows, flow_rows
from search_data import web_rows as search_web_rows

from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import Query, Scope, SearchFailed, SearchRefused, connect, run
from appliance.evidence.search_remote import open_metadata_root, partition_objects
from store import agefile as age
from store.metadata import MetadataWriter
from store.objectstore import S3Settings, StoreRoot, StoreSettings
from store.paths import DataPaths

BUCKET = "lbm-search"
URI = f"s3://{BUCKET}/force/meta"
REASON = "operation kestrel: subject's browsing, both egress points"
SCOPE = Scope(REF, SUBJECT, Pseudonymiser(bytes(range(32))), frozenset({"alice@force.example"}),
              frozenset({"alice"}))  # fmt: skip


def _gateway_rows(stream: str, gateway: str) -> dict[str, list[Any]]:
    rows = {"web": search_web_rows, "email": email_rows, "flow": flow_rows}[stream]()
    if gateway != "gw1":  # the second egress point: its own connection ids, 30 minutes later
        rows["uid"] = [f"{gateway}-{u}" for u in rows["uid"]]
        rows["ts"] = [t + dt.timedelta(minutes=30) for t in rows["ts"]]
    return rows


def _publish_gateway(data_dir: Path, gateway: str, settings: StoreSettings) -> None:
    """The gateway's own writers publish to the bucket (the s3-meta uploader, one object per
    stream and hour), as a gateway configured with `metadata_root = URI` does."""
    paths = DataPaths(data_dir, store=settings)
    for stream in ("web", "email", "flow"):
        writer = MetadataWriter(stream, "proxy", paths=paths, gateway=gateway)
        writer.append_batch(_gateway_rows(stream, gateway))
        writer.flush()
        writer.publish()
        assert writer.wait_uploaded(30), f"{gateway} {stream}: not uploaded"
        writer.close()


def _settings(s3: S3Server, endpoint: str | None = None) -> StoreSettings:
    creds = S3Settings(endpoint=endpoint or s3.endpoint, region=REGION,
                       access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)  # fmt: skip
    return StoreSettings(URI, "", "", creds)


@dataclasses.dataclass
class Store:
    s3: S3Server
    root: StoreRoot
    local: Path  # the same files on local disk
    lbm: Lbm  # a third data dir, its metadata root the bucket


@pytest.fixture(scope="module")
def store(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Store:
    tmp = tmp_path_factory.mktemp("s3-search")
    s3.make_bucket(BUCKET)
    root = open_metadata_root(_settings(s3))
    assert isinstance(root, StoreRoot)
    for gateway in ("gw1", "gw2"):
        _publish_gateway(tmp / gateway, gateway, _settings(s3))
    local = tmp / "combined"  # the same objects, downloaded: the local root to compare with
    pafs.copy_files(root.path(), str(local), root.fs, pafs.LocalFileSystem())
    lbm = Lbm(tmp / "search-host")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    assert lbm.inproc("keys", "investigator", "add", "inv1", age.generate()[1], "--principal",
                      "p900", "--login", "root").returncode == 0  # fmt: skip
    lbm.grant(REF, SUBJECT, investigator="inv1")
    (tmp / "feed.csv").write_text(FEED)
    assert lbm.inproc("identity", "import", str(tmp / "feed.csv")).returncode == 0
    s3_store_config(lbm.data_dir, s3.endpoint, metadata_root=URI)
    return Store(s3, root, local, lbm)


def _json_rows(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_third_gateway_sees_both_gateways_rows_once_as_over_a_local_root(store: Store) -> None:
    keys = [k for k in store.s3.keys(BUCKET, "force/meta/") if k.endswith(".parquet")]
    assert {k.rsplit("/", 1)[1].split("__")[0] for k in keys} == {"gw1", "gw2"}
    assert len(keys) == len({str(p) for p in store.local.rglob("*.parquet")})
    argv = ("search", "--stream", "web", "--ref", REF, "--reason", REASON, "--json")
    remote = store.lbm(*argv)  # the real CLI, reading the bucket
    assert remote.returncode == 0, remote.stderr
    rows = _json_rows(remote.stdout)
    seen = [(r["gateway"], r["uid"]) for r in rows]
    assert len(seen) == len(set(seen)) == 2 * len(search_web_rows()["uid"])
    assert {g for g, _ in seen} == {"gw1", "gw2"}
    subject = [(r["gateway"], r["ts"], r["host"]) for r in rows if r["principal"] == SUBJECT]
    assert subject == [
        ("gw1", "2026-03-01T09:00:00Z", "evidence.example"),
        ("gw2", "2026-03-01T09:30:00Z", "evidence.example"),
        ("gw1", "2026-03-02T09:00:00Z", "www.evidence.example"),
        ("gw2", "2026-03-02T09:30:00Z", "www.evidence.example"),
    ]
    for canary in THIRD_PARTY:  # pseudonyms over the bucket as over a local root
        assert canary not in remote.stdout
    entry = json.loads((store.lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "search" and entry["refs"] == [REF]
    assert entry["fields"]["rows"] == len(rows) and "evidence.example" not in json.dumps(entry)
    set_store(store.lbm.data_dir, metadata_root=str(store.local))
    try:
        assert store.lbm.inproc(*argv).stdout == remote.stdout
    finally:
        set_store(store.lbm.data_dir, metadata_root=URI)


@pytest.mark.parametrize(
    "query",
    [
        Query(stream="web", principal=SUBJECT, start=DAY1, end=DAY2),
        Query(stream="email", principal=SUBJECT, columns=("gateway", "mail_from", "rcpt_to")),
        Query(stream="flow", columns=("gateway", "uid", "client_ip", "server_ip")),
        Query(stream="dns"),  # no object at all: an empty view with the stream's columns
        Query(community_id="1:cid1"),
        Query(sql="SELECT gateway, principal, count(*) AS n FROM web GROUP BY ALL ORDER BY ALL"),
        Query(stream="web", count_by=("gateway", "date")),
    ],
    ids=["principal-day", "email", "columns", "empty", "community-id", "sql", "count-by"],
)
def test_every_kind_of_search_gives_the_local_roots_result(store: Store, query: Query) -> None:
    query = dataclasses.replace(query, ref=REF, reason="r")
    remote = run(store.root, query, SCOPE)
    local = run(store.local, query, SCOPE)
    assert remote.schema == local.schema
    assert sorted(map(str, remote.to_pylist())) == sorted(map(str, local.to_pylist()))
    if query.stream != "dns":
        assert remote.num_rows > 0


def test_a_one_day_search_never_opens_another_days_objects(store: Store) -> None:
    bad = "force/meta/stream=web/date=2026-02-01/hour=00/gw9__proxy__0000000099.parquet"
    late = "force/meta/stream=web/date=2026-03-02/hour=23/gw9__proxy__0000000098.parquet"
    client = store.s3.client()
    for key in (bad, late):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1 not parquet at all")
    try:
        day = Query(stream="web", start=DAY2, end=DAY2 + dt.timedelta(hours=12),
                    count_by=("gateway", "host"), ref=REF, reason="r")  # fmt: skip
        assert run(store.root, day, SCOPE).to_pylist() == [
            {"gateway": "gw1", "host": "news.example", "count": 1},
            {"gateway": "gw1", "host": "www.evidence.example", "count": 1},
            {"gateway": "gw2", "host": "news.example", "count": 1},
            {"gateway": "gw2", "host": "www.evidence.example", "count": 1},
        ]
        listed = partition_objects(store.root, ["web"], DAY2, DAY2 + dt.timedelta(hours=10))
        assert [i.path.split("/stream=web/")[1].rsplit("/", 1)[0] for i in listed["web"]] == [
            "date=2026-03-02/hour=09",
            "date=2026-03-02/hour=09",
        ]
        # Without the range both corrupt objects are read: proof the range pruned them.
        with pytest.raises(SearchFailed, match=r"gw9__proxy__00000000(98|99)\.parquet"):
            run(store.root, Query(stream="web", count_by=("host",)), None)
    finally:
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": bad}, {"Key": late}]})


def test_sql_cannot_reach_the_bucket_or_the_datasets_behind_the_views(store: Store) -> None:
    for sql in (
        f"SELECT * FROM read_parquet('{URI}/stream=web/*/*/*.parquet')",
        f"SELECT * FROM '{URI}/stream=web/date=2026-03-01/hour=09/x.parquet'",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM _lbm_web_0123456789abcdef",  # a name like the registered dataset's
    ):
        with pytest.raises(SearchRefused):
            run(store.root, Query(sql=sql, ref=REF, reason="r"), SCOPE)
    # Below the parse check, the connection itself: no file, no S3, no secret, locked.
    con = connect(store.root, Query(stream="web", ref=REF, reason="r"), SCOPE)
    try:
        with pytest.raises(duckdb.Error, match=r"(?i)permission|disabled|external"):
            con.sql(f"SELECT * FROM read_parquet('{URI}/stream=web/*/*/*.parquet')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
        try:  # DuckDB refuses even to look for stored secrets; if it did look: none
            secrets = con.execute("SELECT count(*) FROM duckdb_secrets()").fetchall()
        except duckdb.PermissionException:
            secrets = [(0,)]
        assert secrets == [(0,)]
    finally:
        con.close()


def test_an_unreachable_store_fails_the_search_clearly(store: Store) -> None:
    with Outage(store.s3.endpoint) as gate:
        gate.down()
        root = open_metadata_root(_settings(store.s3, gate.endpoint))
        began = time.monotonic()
        with pytest.raises(SearchFailed, match=rf"reading metadata at {URI}") as caught:
            run(root, Query(stream="web", ref=REF, reason="r"), SCOPE)
        assert time.monotonic() - began < 30
        assert SECRET_KEY not in str(caught.value) and ACCESS_KEY not in str(caught.value)
        set_store(store.lbm.data_dir, endpoint=gate.endpoint)
        try:
            result = store.lbm.inproc("search", "--stream", "web", "--ref", REF, "--reason", "r")
        finally:
            set_store(store.lbm.data_dir, endpoint=store.s3.endpoint)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("lbm: error: search failed reading metadata at s3://")
        assert SECRET_KEY not in result.stderr

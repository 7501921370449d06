"""Issue 19 attacked, search side: `lbm search --sql` over an object-store root, where each
stream's objects are a pyarrow dataset registered in DuckDB behind the pseudonymising view.

The S3 server is moto's standalone server (tests/support/s3server.py), a stand-in for MinIO or
Ceph RGW; rows are published by a real MetadataWriter and read through pyarrow's S3FileSystem.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from appliance.evidence import search_remote
from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import SearchRefused, run
from appliance.evidence.search_remote import open_metadata_root
from appliance.evidence.search_views import Query, Scope
from store.metadata import MetadataWriter
from store.objectstore import S3Settings, StoreSettings
from store.paths import DataPaths

REF, SUBJECT, OTHER = "AUTH-RT-S", "p12345", "p99999"
SCOPE = Scope(REF, SUBJECT, Pseudonymiser(bytes(range(32))))
HIDDEN = "_lbm_web_0123456789abcdef"  # the registered dataset's name, as an attacker learns it
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def root(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> search_remote.MetadataRoot:
    s3.make_bucket("rt-search")
    s3s = S3Settings(s3.endpoint, REGION, ACCESS_KEY, SECRET_KEY)
    st = StoreSettings("s3://rt-search/force", "/x/a", "/x/k", s3s, metadata_publish_seconds=3600)
    paths = DataPaths(tmp_path_factory.mktemp("gw"), store=st)
    with MetadataWriter("web", "proxy", paths=paths, gateway="gw1", flush_interval=0.05) as w:
        for i, who in enumerate([SUBJECT, OTHER, OTHER]):
            w.append({"ts": T0 + timedelta(minutes=i), "uid": f"C{i}", "principal": who,
                      "host": f"host{i}.example"})  # fmt: skip
        w.publish()
        assert w.wait_uploaded(20)
    return open_metadata_root(st)


def search(root: search_remote.MetadataRoot, sql: str) -> list[dict[str, object]]:
    query = Query(sql=sql, ref=REF, reason="r", start=T0, end=T0 + timedelta(days=1))
    return run(root, query, SCOPE).to_pylist()


def test_the_view_shows_the_subject_and_pseudonyms_only(root: search_remote.MetadataRoot) -> None:
    shown = search(root, "SELECT principal FROM web ORDER BY uid")
    assert shown[0] == {"principal": SUBJECT}
    assert shown[1] == shown[2] and str(shown[1]["principal"]).startswith("pseud:")
    assert OTHER not in str(shown)


@pytest.mark.parametrize(
    "sql",
    [
        # the views' SQL: the dataset's name, the scope, and the pseudonym keys in clear
        "WITH duckdb_views AS (SELECT * FROM duckdb_views) SELECT sql FROM duckdb_views",
        "WITH pg_views AS (SELECT * FROM pg_views) SELECT definition FROM pg_views",
        "WITH pg_class AS (SELECT * FROM pg_class) SELECT relname FROM pg_class",
        # the registered dataset itself: every person's rows in clear
        f"WITH {HIDDEN} AS (SELECT * FROM {HIDDEN}) SELECT principal FROM {HIDDEN}",
        f"WITH a AS (SELECT principal FROM {HIDDEN}), {HIDDEN} AS (SELECT 1) SELECT * FROM a",
        f"WITH RECURSIVE {HIDDEN} AS (SELECT * FROM {HIDDEN}) SELECT principal FROM {HIDDEN}",
    ],
)
def test_a_cte_cannot_shadow_the_catalog_or_the_registered_dataset(
    root: search_remote.MetadataRoot, monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    """HOLE (fixed): the parse check allowed any name defined as a CTE, but a CTE that reads
    its own name (or an earlier CTE reading a later one's) binds that name to the catalog:
    `duckdb_views` gave the pseudonym keys and the registered dataset's name, and the dataset
    gave every person's clear identifiers, under the audit of one reference."""
    monkeypatch.setattr(search_remote.secrets, "token_hex", lambda n: HIDDEN[-2 * n :])
    with pytest.raises(SearchRefused, match="CTE"):
        search(root, sql)


def test_ctes_over_the_views_still_work(root: search_remote.MetadataRoot) -> None:
    sql = (
        "WITH w AS (SELECT uid, principal FROM web), web2 AS (SELECT * FROM w) "
        "SELECT count(*) AS n FROM web2 JOIN w USING (uid)"
    )
    assert search(root, sql) == [{"n": 3}]


@pytest.mark.parametrize(
    "sql",
    [
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH 's3://rt-search/force/x.duckdb' AS x",
        "PRAGMA version",
        "CALL pragma_version()",
        "SET s3_endpoint = '127.0.0.1:1'",
        "COPY web TO '/tmp/rt-leak.csv'",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM pragma_version()",
        "SELECT * FROM read_parquet('ENDPOINT/rt-search/force/stream=web/*/*/*.parquet')",
        "SELECT * FROM 'ENDPOINT/rt-search/force/stream=web/date=2026-03-01/hour=09/x.parquet'",
        "SELECT * FROM web WHERE uid IN (SELECT uid FROM read_parquet('s3://rt-search/**'))",
    ],
)
def test_the_bucket_stays_out_of_reach_of_sql(
    root: search_remote.MetadataRoot, s3: S3Server, sql: str
) -> None:
    """Not a hole: no extension, secret, attachment, setting, file or URL (the store's own
    endpoint included) is reachable from `--sql` over an object-store root."""
    with pytest.raises(SearchRefused):
        search(root, sql.replace("ENDPOINT", s3.endpoint))


def test_a_local_root_is_covered_too(root: search_remote.MetadataRoot, tmp_path: Path) -> None:
    """The same hole on a local root (the default): the views read the files directly, but
    `duckdb_views` still gave their SQL with the pseudonym keys, which turn every pseudonym
    back into a staff id by trying the few thousand ids a force has."""
    assert not isinstance(root, Path)
    local = tmp_path / "metadata"
    pafs.copy_files(root.path(), str(local), root.fs, pafs.LocalFileSystem())
    assert search(local, "SELECT count(*) AS n FROM web") == [{"n": 3}]
    with pytest.raises(SearchRefused, match="CTE"):
        search(local, "WITH duckdb_views AS (FROM duckdb_views) SELECT sql FROM duckdb_views")

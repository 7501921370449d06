"""`lbm search --sql` escape attempts: each is refused, and none shows a third party's clear
identifier or a file's content. Two layers are tested apart: the parse-tree check (one SELECT
over the views only) and the locked DuckDB connection (allowed directory, no external access)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from search_data import REF, SUBJECT, THIRD_PARTY, write_metadata

from appliance.evidence import sqlguard
from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import Query, Scope, SearchRefused, run
from store.paths import DataPaths

SCOPE = Scope(REF, SUBJECT, Pseudonymiser(b"k" * 32))
VIEWS = ("web", "email", "flow", "dns")


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = DataPaths(tmp_path_factory.mktemp("search-sandbox"))
    write_metadata(paths)
    return paths.metadata


def _escapes(meta: Path) -> list[str]:
    raw = f"{meta}/stream=web/*/*/*.parquet"
    one = next(meta.glob("stream=web/*/*/*.parquet"))
    return [
        f"COPY (SELECT * FROM web) TO '{meta}/stream=web/x.csv'",
        f"ATTACH '{meta}/x.duckdb' AS x",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT principal FROM read_parquet('{raw}')",
        f"SELECT principal FROM '{one}'",
        f"SELECT * FROM web WHERE uid IN (SELECT uid FROM read_parquet('{raw}'))",
        f'WITH "{one}" AS (SELECT 1) SELECT * FROM (SELECT 2), "{one}"',
        "SELECT 1; SELECT principal FROM web",
        "SELECT 1;",  # trailing empty statement is fine? no: still one statement, checked below
        "PRAGMA database_list",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "WITH w AS (DELETE FROM web RETURNING *) SELECT * FROM w",
        "INSERT INTO web SELECT * FROM web",
        "CREATE MACRO m(x) AS x",
        "SELECT sql FROM duckdb_views()",
        "SELECT * FROM information_schema.views",
        "SELECT * FROM memory.main.web",
        f"SELECT * FROM glob('{meta}/**')",
        "SELECT * FROM query('SELECT 1')",
        "DESCRIBE web",
        "SUMMARIZE web",
        "EXPLAIN SELECT * FROM web",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CALL pragma_version()",
    ]


def test_every_escape_is_refused_and_shows_nothing(meta: Path) -> None:
    for sql in _escapes(meta):
        if sql == "SELECT 1;":
            assert run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE).num_rows == 1
            continue
        with pytest.raises(SearchRefused) as info:
            run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE)
        assert info.value.code in (1, 2), sql
        message = str(info.value)
        assert "--sql" in message, (sql, message)
        for canary in (*THIRD_PARTY, "root:x:0"):
            assert canary not in message, (sql, message)
    assert not (meta / "stream=web" / "x.csv").exists()
    assert not (meta / "x.duckdb").exists()


def test_limit_wraps_the_sql_safely(meta: Path) -> None:
    def rows(sql: str) -> int:
        return run(meta, Query(sql=sql, ref=REF, reason="r", limit=2), SCOPE).num_rows

    assert rows("SELECT * FROM web;") == 2
    assert rows("SELECT * FROM web -- a comment") == 2
    with pytest.raises(SearchRefused):
        rows("SELECT 1) UNION ALL (SELECT * FROM read_csv('/etc/passwd')")


def test_sql_without_a_scope_is_refused(meta: Path) -> None:
    with pytest.raises(SearchRefused):
        run(meta, Query(sql="SELECT count(*) FROM web"), None)


def test_views_and_ctes_are_all_sql_can_read(meta: Path) -> None:
    sql = (
        "WITH w AS (SELECT uid, community_id FROM web) "
        "SELECT f.uid, w.uid AS web_uid FROM flow f JOIN w USING (community_id) "
        "WHERE f.uid IN (SELECT uid FROM flow) ORDER BY 1"
    )
    table = run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE)
    assert table.to_pylist() == [
        {"uid": "F0", "web_uid": "C0"},
        {"uid": "F1", "web_uid": "C1"},
    ]


def test_the_locked_connection_holds_even_without_the_parse_check(tmp_path: Path) -> None:
    root = tmp_path / "metadata"
    root.mkdir()
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"x": ["outside-canary"]}), outside)
    pq.write_table(pa.table({"x": ["inside"]}), root / "in.parquet")
    con = duckdb.connect()
    sqlguard.lock_down(con, root)
    assert con.sql(f"SELECT x FROM read_parquet('{root}/in.parquet')").fetchall() == [("inside",)]
    for sql in (
        f"SELECT * FROM read_parquet('{outside}')",
        f"SELECT * FROM read_parquet('{root}/../outside.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"ATTACH '{tmp_path}/x.duckdb'",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET lock_configuration = false",
        "INSTALL httpfs",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert con.sql("SELECT current_setting('temp_directory')").fetchall() == [("",)]
    (root / "link.parquet").symlink_to(outside)
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT * FROM read_parquet('{root}/link.parquet')").fetchall()


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT 1; SELECT 2", "exactly one statement (found 2)"),
        ("COPY web TO 'x.csv'", "must be a SELECT (found COPY)"),
        ("SELECT * FROM read_csv('/etc/passwd')", "a table function"),
        ("SELECT * FROM 'x.parquet'", "not 'x.parquet'"),
        ("SELECT * FROM nosuch", "not 'nosuch'"),
        ("SELEC 1", "does not parse"),
    ],
)
def test_refusals_say_why(sql: str, why: str) -> None:
    with pytest.raises(sqlguard.SqlRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        sqlguard.check_select(sql, VIEWS)


def test_a_runaway_query_is_stopped(meta: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recursive CTE that never ends would compete with the daemons for CPU and memory: it is
    interrupted at the time limit (or fails at the memory limit), with a clear error."""
    from appliance.evidence import search

    monkeypatch.setattr(search, "TIME_LIMIT_SECONDS", 1.0)
    sql = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1e15) "
        "SELECT count(*) FROM r"
    )
    with pytest.raises(search.SearchFailed, match=r"time limit|more memory"):
        run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE)

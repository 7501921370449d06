"""Search views in process: partition pruning, empty streams, pseudonyms for everyone but the
subject (in filters, output and `--sql`), and which searches count as person-level."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest
from search_data import (
    DAY1,
    DAY2,
    OTHER_REF,
    REF,
    SUBJECT,
    SUBJECT_VALUES,
    THIRD_PARTY,
    write_metadata,
)

from appliance.evidence.pseudonym import Pseudonymiser, key_for
from appliance.evidence.search import Query, Scope, SearchError, SearchFailed, run, validate
from appliance.evidence.search_views import duck_type, partition_files
from store import schemas
from store.paths import DataPaths

KEY = bytes(range(32))
SCOPE = Scope(REF, SUBJECT, Pseudonymiser(KEY), frozenset({"alice@force.example"}),
              frozenset({"alice"}))  # fmt: skip


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = DataPaths(tmp_path_factory.mktemp("search-views"))
    write_metadata(paths)
    return paths.metadata


def _text(table: pa.Table) -> str:
    return json.dumps(table.to_pylist(), default=str)


def _kind(typ: pa.DataType) -> object:
    return ("list", typ.value_type) if pa.types.is_list(typ) else typ


def _person(meta: Path, **kw: object) -> pa.Table:
    return run(meta, Query(ref=REF, reason="test", **kw), SCOPE)  # type: ignore[arg-type]


def test_a_one_day_query_never_opens_another_days_files(meta: Path) -> None:
    bad = meta / "stream=web" / "date=2026-02-01" / "hour=00"
    bad.mkdir(parents=True)
    (bad / "gw1__test__0000000099.parquet").write_bytes(b"PAR1 not parquet at all")
    try:
        day = Query(stream="web", start=DAY2, end=DAY2 + dt.timedelta(days=1), count_by=("host",))
        assert run(meta, day, SCOPE).to_pylist() == [  # with a ref: groups of any size
            {"host": "news.example", "count": 1},
            {"host": "www.evidence.example", "count": 1},
        ]
        files = partition_files(meta, "web", DAY2, DAY2 + dt.timedelta(hours=10))
        assert [f.parent.parent.name + "/" + f.parent.name for f in files] == [
            "date=2026-03-02/hour=09"
        ]
        # The same search without a range reads the corrupt file: proof the range pruned it.
        with pytest.raises(SearchFailed, match=r"gw1__test__0000000099\.parquet"):
            run(meta, Query(stream="web", count_by=("host",)), None)
    finally:
        (bad / "gw1__test__0000000099.parquet").unlink()


def test_a_stream_without_files_is_an_empty_view_with_its_columns(meta: Path) -> None:
    table = _person(meta, sql="SELECT * FROM dns")
    assert table.num_rows == 0
    assert table.column_names == schemas.columns("dns")
    assert [_kind(f.type) for f in table.schema] == [_kind(f.type) for f in schemas.schema("dns")]
    assert {duck_type(f.type) for f in schemas.schema("flow")} >= {"TIMESTAMPTZ", "VARCHAR[]"}


def test_only_the_subjects_own_values_are_clear(meta: Path) -> None:
    web = _person(meta, stream="web").to_pylist()
    by_uid = {r["uid"]: r for r in web}
    assert (by_uid["C0"]["principal"], by_uid["C0"]["client_ip"], by_uid["C0"]["proxy_user"]) == (
        "p1", "10.0.0.1", "alice")  # fmt: skip
    bob = by_uid["C1"]
    assert bob["principal"] == SCOPE.pseud.value("p2")
    assert bob["client_ip"] == SCOPE.pseud.value("10.0.0.2")
    assert by_uid["C3"]["principal"] is None
    assert by_uid["C3"]["proxy_user"] == SCOPE.pseud.value("ghost-canary")
    # Stable within REF: bob is the same pseudonym on every row, so recurrence shows.
    assert {by_uid[u]["principal"] for u in ("C1", "C2", "C5")} == {SCOPE.pseud.value("p2")}
    # Another authorisation's refs and record ids are not shown: who else is monitored.
    assert bob["refs"] == [] and bob["record_ids"] == [] and bob["decision"] == "passed"
    assert by_uid["C3"]["decision"] == "passed" and by_uid["C0"]["decision"] == "intercepted"
    assert by_uid["C0"]["refs"] == [REF] and by_uid["C0"]["record_ids"] == [f"{REF}/000001/1"]
    text = _text(_person(meta, sql="SELECT * FROM web, email, flow"))
    for canary in (*THIRD_PARTY, OTHER_REF):
        assert canary not in text
    for value in SUBJECT_VALUES:
        assert value in text


def test_mail_parties_follow_direction_and_the_identity_map(meta: Path) -> None:
    rows = {r["uid"]: r for r in _person(meta, stream="email").to_pylist()}
    out, inbound, colleague = rows["M0"], rows["M1"], rows["M2"]
    assert out["mail_from"] == "alice@force.example" and out["auth_user"] == "alice"
    assert out["rcpt_to"] == SCOPE.pseud.value("ext@outside.example")
    assert inbound["rcpt_to"] == "alice@force.example"
    assert inbound["mail_from"] == SCOPE.pseud.value("stranger@outside.example")
    assert inbound["client_ip"] == SCOPE.pseud.value("198.51.100.7")  # the sender's server
    # A colleague writing to the subject: the subject's address is clear, the colleague's not.
    assert colleague["rcpt_to"] == "alice@force.example"
    assert colleague["mail_from"] == SCOPE.pseud.value("bob@force.example")
    assert colleague["principal"] == SCOPE.pseud.value("p2")


def test_pseudonyms_differ_per_ref_and_sql_matches_python(meta: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "reg.sqlite")
    k1, k1_again, k2 = key_for(conn, "R-A"), key_for(conn, "R-A"), key_for(conn, "R-B")
    assert k1 == k1_again and k1 != k2 and len(k1) == 32
    assert Pseudonymiser(k1).value("p2") != Pseudonymiser(k2).value("p2")
    other = Scope("R-B", SUBJECT, Pseudonymiser(k2))
    shown = run(meta, Query(ref="R-B", reason="t", sql="SELECT principal FROM flow"), other)
    assert sorted(shown.column("principal").to_pylist()) == sorted(
        ["p1", Pseudonymiser(k2).value("p2")]
    )


def test_filters_never_match_a_third_partys_clear_value(meta: Path) -> None:
    assert _person(meta, stream="web", ip="10.0.0.2").num_rows == 0
    assert _person(meta, stream="web", ip="10.0.0.1").num_rows == 2
    assert _person(meta, sql="SELECT * FROM web WHERE principal = 'p2'").num_rows == 0
    bob = SCOPE.pseud.value("p2")
    assert _person(meta, stream="web", principal=bob).num_rows == 3
    by_pseud_ip = _person(meta, stream="web", ip=SCOPE.pseud.value("10.0.0.2"))
    assert by_pseud_ip.num_rows == 3
    day1 = _person(meta, stream="web", principal=SUBJECT, start=DAY1, end=DAY2)
    assert day1.column("uid").to_pylist() == ["C0"]


def test_host_and_community_id_filters(meta: Path) -> None:
    hosts = run(meta, Query(stream="web", host="evidence.example", columns=("host",)), SCOPE)
    assert sorted(hosts.column("host").to_pylist()) == [
        "evidence.example", "evidence.example", "www.evidence.example"]  # fmt: skip
    joined = _person(meta, community_id="1:cid1")
    assert sorted(joined.column("stream").to_pylist()) == ["flow", "web"]
    assert set(joined.column("principal").to_pylist()) == {SCOPE.pseud.value("p2")}


@pytest.mark.parametrize(
    ("query", "why"),
    [
        (Query(stream="web", count_by=("host", "date")), None),
        (
            Query(stream="web", columns=("ts", "host", "status")),
            "row-level output (without --ref, only --count-by aggregates)",
        ),
        (Query(stream="web", count_by=("community_id",)), "output column 'community_id'"),
        (Query(stream="web"), "output column 'principal'"),
        (Query(stream="web", count_by=("client_ip",)), "output column 'client_ip'"),
        (Query(stream="web", columns=("host", "refs")), "output column 'refs'"),
        (Query(stream="web", count_by=("decision", "date")), "output column 'decision'"),
        (Query(stream="web", count_by=("host",), ip="10.0.0.9"), "--ip"),
        (Query(sql="SELECT count(*) FROM web"), "--sql"),
        (Query(community_id="1:x"), "output column 'principal'"),
    ],
)
def test_what_counts_as_person_level(query: Query, why: str | None) -> None:
    validate(query)
    assert query.person_level_because() == why


@pytest.mark.parametrize(
    "query",
    [
        Query(),
        Query(stream="web", columns=("url",)),
        Query(stream="web", columns=("ts",), count_by=("host",)),
        Query(sql="SELECT 1", stream="web"),
        Query(stream="web", start=DAY2, end=DAY1),
        Query(community_id="1:x", count_by=("host",)),
        Query(stream="web", limit=0),
    ],
)
def test_malformed_queries_are_usage_errors(query: Query) -> None:
    with pytest.raises(SearchError):
        validate(query)

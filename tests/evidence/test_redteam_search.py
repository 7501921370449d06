"""Red-team plays against `lbm search`: ways to learn who a third party is without a ref, or
under a ref, that the first version let through.

- community_id is an unkeyed hash of the 5-tuple: shown beside the ports and server address, it
  gives a third party's clear client address back by trying every internal address.
- An aggregate without a ref over a host one person uses (`--host X --count-by date`) shows when
  that person used it; row-level output without identifying columns shows every visit's time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

import communityid
import pyarrow as pa
import pytest

from appliance.cli.search_cmd import parquet_target, write_parquet
from appliance.evidence.pseudonym import Pseudonymiser
from appliance.evidence.search import (
    MIN_PERSONS,
    Query,
    Scope,
    SearchRefused,
    authorise,
    run,
)
from store.metadata import MetadataWriter
from store.paths import DataPaths

REF = "AUTH-RT-1"
SUBJECT = "p1"
DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SCOPE = Scope(REF, SUBJECT, Pseudonymiser(b"r" * 32))
SERVER = ("192.0.2.10", 443)
NET = ipaddress.ip_network("10.0.0.0/24")  # a small internal range keeps the test quick


def _cid(client: str, port: int) -> str:
    flow = communityid.FlowTuple.make_tcp(client, SERVER[0], port, SERVER[1])
    return str(communityid.CommunityID().calc(flow))


def _rows() -> dict[str, list[Any]]:
    # p1 (the subject) .. p6 all visit common.example; only p2 visits rare.example.
    people = [(f"p{i}", f"10.0.0.{i}", 40000 + i) for i in range(1, 7)]
    rows = [(DAY + dt.timedelta(minutes=i), p, ip, port, "common.example")
            for i, (p, ip, port) in enumerate(people)]  # fmt: skip
    rows.append((DAY + dt.timedelta(hours=3), "p2", "10.0.0.2", 40100, "rare.example"))
    rows.append((DAY + dt.timedelta(days=1, hours=3), "p2", "10.0.0.2", 40101, "rare.example"))
    # p3 is the subject of another authorisation: two decrypted requests on one connection.
    rows += [(DAY + dt.timedelta(hours=5), "p3", "10.0.0.3", 40200, "watched.example")] * 2
    other = [["AUTH-OTHER"] if r[4] == "watched.example" else [] for r in rows]
    return {
        "refs": other,
        "decision": ["intercepted" if o else None for o in other],
        "method": ["GET" if o else None for o in other],
        "status": [200 if o else None for o in other],
        "ts": [r[0] for r in rows],
        "uid": [f"C{i}" for i in range(len(rows))],
        "principal": [r[1] for r in rows],
        "client_ip": [r[2] for r in rows],
        "client_port": [r[3] for r in rows],
        "server_ip": [SERVER[0]] * len(rows),
        "server_port": [SERVER[1]] * len(rows),
        "host": [r[4] for r in rows],
        "scheme": ["https"] * len(rows),
        "community_id": [_cid(r[2], r[3]) for r in rows],
    }


def _flows() -> dict[str, list[Any]]:
    # Capture gives an inbound flow (external originator) the principal of its internal
    # responder: p3's workstation 10.0.0.3 is then the row's server_ip. Also p4 -> p5 inside,
    # and the subject's own inbound flow.
    rows = [("p3", "203.0.113.9", "10.0.0.3", False, True),
            ("p4", "10.0.0.4", "10.0.0.5", True, True),
            ("p1", "203.0.113.9", "10.0.0.1", False, True),
            ("p1", "10.0.0.1", "198.51.100.1", True, False)]  # fmt: skip
    return {
        "ts": [DAY + dt.timedelta(minutes=i) for i in range(len(rows))],
        "uid": [f"F{i}" for i in range(len(rows))],
        "principal": [r[0] for r in rows],
        "client_ip": [r[1] for r in rows],
        "server_ip": [r[2] for r in rows],
        "local_orig": [r[3] for r in rows],
        "local_resp": [r[4] for r in rows],
        "proto": ["tcp"] * len(rows),
    }


def _mails() -> dict[str, list[Any]]:
    rows = [("p2", "outbound", "Bobs-MacBook-Pro.local"),
            ("p1", "outbound", "alice-pc.force.example"),
            ("p1", "inbound", "mx1.outside.example")]  # fmt: skip
    return {
        "ts": [DAY + dt.timedelta(minutes=i) for i in range(len(rows))],
        "uid": [f"M{i}" for i in range(len(rows))],
        "principal": [r[0] for r in rows],
        "direction": [r[1] for r in rows],
        "helo": [r[2] for r in rows],
        "outcome": ["queued"] * len(rows),
    }


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = DataPaths(tmp_path_factory.mktemp("redteam-search"))
    for stream, rows in (("web", _rows()), ("flow", _flows()), ("email", _mails())):
        writer = MetadataWriter(stream, "test", paths=paths, gateway="gw1")
        writer.append_batch(rows)
        writer.close()
    return paths.metadata


def _recover_client_ips(table: pa.Table) -> set[str]:
    """The attack: try every internal address until the shown community_id matches."""
    found: set[str] = set()
    for row in table.to_pylist():
        for host in NET.hosts():
            if _cid(str(host), row["client_port"]) == row["community_id"]:
                found.add(str(host))
                break
    return found


def test_community_id_does_not_give_a_third_partys_address_back(meta: Path) -> None:
    sql = (
        "SELECT client_ip, client_port, community_id FROM web "
        "WHERE host = 'rare.example' OR principal = 'p1'"
    )
    table = run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE)
    shown = table.to_pylist()
    assert len(shown) == 3
    third = [r for r in shown if r["client_ip"] != "10.0.0.1"]
    assert len(third) == 2 and all(r["client_ip"].startswith("pseud:") for r in third)
    # The subject's own community id stays clear (it joins with Zeek data), a third party's not.
    assert _recover_client_ips(table) == {"10.0.0.1"}
    assert {r["community_id"] for r in third} == {
        SCOPE.pseud.value(_cid("10.0.0.2", 40100)),
        SCOPE.pseud.value(_cid("10.0.0.2", 40101)),
    }
    # Joining on a community id the investigator already has still works (a stored-value filter).
    joined = run(meta, Query(stream="web", community_id=_cid("10.0.0.2", 40100), ref=REF), SCOPE)
    assert joined.column("host").to_pylist() == ["rare.example"]


def test_community_id_without_a_ref_is_refused(tmp_path: Path) -> None:
    for query in (
        Query(stream="web", columns=("client_port", "community_id")),
        Query(stream="web", count_by=("community_id", "client_port")),
    ):
        with pytest.raises(SearchRefused, match="community_id") as info:
            authorise(query, tmp_path / "registry.sqlite", "root", [])
        assert info.value.code == 2


def test_an_aggregate_without_a_ref_hides_groups_of_few_people(meta: Path) -> None:
    everyone = run(meta, Query(stream="web", count_by=("host",)), None).to_pylist()
    assert everyone == [{"host": "common.example", "count": 6}]  # rare.example: one person
    # The attack: a host only p2 uses, counted per date and hour, shows when p2 used it.
    for count_by in (("date",), ("date", "hour"), ("host", "date"), ("uid",), ("client_port",)):
        query = Query(stream="web", host="rare.example", count_by=count_by)
        assert authorise(query, meta / "none.sqlite", "root", []) == (None, None)
        assert run(meta, query, None).num_rows == 0, count_by
    per_port = run(meta, Query(stream="web", count_by=("client_port",)), None)
    assert per_port.num_rows == 0  # one person per port: nothing
    assert MIN_PERSONS <= 6
    # Under a ref, the investigator sees every group (third parties stay pseudonymous).
    scoped = run(meta, Query(stream="web", host="rare.example", count_by=("date",), ref=REF), SCOPE)
    assert scoped.to_pylist() == [
        {"date": DAY.date(), "count": 1},
        {"date": (DAY + dt.timedelta(days=1)).date(), "count": 1},
    ]


def test_row_level_output_without_a_ref_is_refused(meta: Path) -> None:
    query = Query(stream="web", host="rare.example", columns=("ts", "host"))
    with pytest.raises(SearchRefused, match="row-level output") as info:
        authorise(query, meta / "none.sqlite", "root", [])
    assert info.value.code == 2
    with pytest.raises(SearchRefused, match="row-level output"):
        run(meta, query, None)  # even called directly, without authorise()


def test_an_internal_responders_address_is_pseudonymised(meta: Path) -> None:
    sql = "SELECT principal, client_ip, server_ip FROM flow ORDER BY ts"
    shown = run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE).to_pylist()
    text = repr(shown)
    for third_party in ("10.0.0.3", "10.0.0.4", "10.0.0.5", "p3", "p4"):
        assert third_party not in text
    assert shown[1]["server_ip"] == SCOPE.pseud.value("10.0.0.5")
    # The subject's own rows stay clear: its address, and where it connected.
    assert shown[2]["server_ip"] == "10.0.0.1" and shown[3]["server_ip"] == "198.51.100.1"
    # `--ip` matches what is shown, so probing a colleague's address finds nothing.
    probe = Query(stream="flow", ip="10.0.0.3", ref=REF, reason="r")
    assert run(meta, probe, SCOPE).num_rows == 0


def test_parquet_output_cannot_be_raced_into_the_data_dir(meta: Path, tmp_path: Path) -> None:
    """`--parquet OUT/x.parquet` is checked, then OUT is swapped for a symlink to a partition
    directory before the write: the file would be read by every later search as metadata."""
    data_root = meta.parent
    out = tmp_path / "out"
    out.mkdir()
    final, why = parquet_target(str(out / "x.parquet"), data_root)
    assert why is None
    partition = next(meta.glob("stream=web/date=*/hour=*"))
    before = sorted(p.name for p in partition.iterdir())
    out.rename(tmp_path / "out-real")
    out.symlink_to(partition, target_is_directory=True)  # the race, won
    table = pa.table({"uid": ["FORGED"]})
    with pytest.raises(OSError, match="inside the data directory"):
        write_parquet(table, final, data_root)
    assert sorted(p.name for p in partition.iterdir()) == before
    # Straight into a directory symlinked from outside: refused before anything runs.
    assert parquet_target(str(out / "y.parquet"), data_root)[1] is not None
    # And the ordinary case still writes, 0600.
    out.unlink()
    (tmp_path / "out-real").rename(out)
    write_parquet(table, final, data_root)
    assert final.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["x.parquet"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM " + "(SELECT * FROM " * 900 + "web" + ")" * 900,
        "SELECT 1 AS x WHERE 1 IN " + "(SELECT " * 600 + "1" + ")" * 600,
        "SELECT " + "list_value(" * 900 + "1" + ")" * 900 + " AS x",
    ],
)
def test_deeply_nested_sql_is_a_refusal_not_a_crash(meta: Path, sql: str) -> None:
    # It used to raise RecursionError out of the checker: a traceback, and no audited refusal.
    with pytest.raises(SearchRefused, match="nested too deeply") as info:
        run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE)
    assert info.value.code == 2


def test_a_third_partys_helo_is_neither_shown_nor_matched(meta: Path) -> None:
    shown = run(meta, Query(sql="SELECT helo FROM email", ref=REF, reason="r"), SCOPE)
    assert "macbook" not in repr(shown.to_pylist()).lower()
    assert SCOPE.pseud.value("Bobs-MacBook-Pro.local") in shown.column("helo").to_pylist()

    def hits(host: str) -> int:
        query = Query(stream="email", host=host, count_by=("date",), ref=REF, reason="r")
        return sum(run(meta, query, SCOPE).column("count").to_pylist())

    assert hits("bobs-macbook-pro.local") == 0  # the probe for a colleague's machine
    assert hits("alice-pc.force.example") == 1  # the subject's own
    assert hits("outside.example") == 1  # the MTA that sent the subject mail


def test_a_third_party_monitored_under_another_ref_does_not_show(meta: Path) -> None:
    """Blanking `decision` was not enough: a row per decrypted request, with a method and a
    status, where everyone else has one row per tunnel, tells that the person is monitored."""
    sql = "SELECT principal, host, decision, method, status, refs FROM web"
    shown = run(meta, Query(sql=sql, ref=REF, reason="r"), SCOPE).to_pylist()
    assert len(shown) == 8 and "watched.example" not in repr(shown)
    assert all(r["decision"] is None and r["method"] is None for r in shown)
    watched = Query(stream="web", host="watched.example", count_by=("date",), ref=REF)
    assert run(meta, watched, SCOPE).num_rows == 0
    # Without a ref the group is one person: not shown either.
    assert run(meta, Query(stream="web", count_by=("host", "status")), None).to_pylist() == [
        {"host": "common.example", "status": None, "count": 6}
    ]

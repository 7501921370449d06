"""`lbm search` end to end: a real grant, assignment and login mapping, the audit entries of
searches and refusals (queries and counts, never results), output formats, and who may search."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from lbm_testing import Lbm, grant_argv
from search_data import DAY1, FEED, OTHER_REF, REF, SUBJECT, THIRD_PARTY, write_metadata

from appliance.evidence.search import Query, SearchRefused, authorise
from store import agefile as age
from store import investigators
from store import sqlite as store_sqlite
from store.paths import DataPaths

REASON = "operation kestrel: subject's browsing"
INV2_RECIPIENT = age.generate()[1]


@pytest.fixture(scope="module")
def lbm(tmp_path_factory: pytest.TempPathFactory) -> Lbm:
    """One data dir: REF (subject p1) assigned to inv1, mapped to the login `root` (the tests'
    user); OTHER_REF (subject p2) to inv2 (login `colleague`); the subject p1 is also registered
    as an investigator (login `subjlogin`)."""
    tmp = tmp_path_factory.mktemp("search-cli")
    runner = Lbm(tmp / "data")
    runner("init", check=True)
    config = runner.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    recipient = age.generate()[1]
    runner("keys", "investigator", "add", "inv1", recipient, "--principal", "p900",
           "--login", "root", check=True)  # fmt: skip
    conn = store_sqlite.connect(runner.data_dir / "registry.sqlite")
    with conn:
        investigators.add(conn, "inv2", INV2_RECIPIENT, "p901", "2026-01-01T00:00:00Z", "colleague")
        investigators.add(conn, "self", age.generate()[1], SUBJECT, "2026-01-01T00:00:00Z",
                          "subjlogin")  # fmt: skip
    conn.close()
    runner.grant(REF, SUBJECT, investigator="inv1")
    other = runner.inproc(*grant_argv(OTHER_REF, "p2", investigator="inv2"))
    assert other.returncode == 0, other.stderr
    feed = tmp / "feed.csv"
    feed.write_text(FEED)
    assert runner.inproc("identity", "import", str(feed)).returncode == 0
    write_metadata(DataPaths(runner.data_dir))
    return runner


def _audit(lbm: Lbm) -> list[dict[str, Any]]:
    lines = (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _last(lbm: Lbm, action: str) -> dict[str, Any]:
    return [e for e in _audit(lbm) if e["action"] == action][-1]


def test_person_level_search_end_to_end(lbm: Lbm) -> None:
    result = lbm("search", "--stream", "web", "--principal", SUBJECT, "--ref", REF,
                 "--reason", REASON, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["uid"], r["principal"], r["host"]) for r in rows] == [
        ("C0", "p1", "evidence.example"),
        ("C4", "p1", "www.evidence.example"),
    ]
    assert rows[0]["ts"] == "2026-03-01T09:00:00Z" and rows[0]["refs"] == [REF]
    entry = _last(lbm, "search")
    assert entry["refs"] == [REF] and entry["actor"] == "root"
    assert entry["fields"] == {
        "query": {"stream": "web", "principal": SUBJECT},
        "reason": REASON,
        "rows": 2,
        "person_level": True,
        "format": "json",
        "investigator": "inv1",
        "basis": "assigned",
    }
    assert "evidence.example" not in json.dumps(entry)  # a result, never in the audit


def test_sql_output_pseudonymises_third_parties(lbm: Lbm) -> None:
    sql = "SELECT principal, proxy_user, count(*) AS n FROM web GROUP BY ALL ORDER BY n, 1"
    result = lbm.inproc("search", "--sql", sql, "--ref", REF, "--reason", REASON, "--csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "principal,proxy_user,n"
    assert "p1,alice,2" in lines and len(lines) == 4
    for canary in THIRD_PARTY:
        assert canary not in result.stdout
    assert _last(lbm, "search")["fields"]["query"] == {"sql": sql}


def test_aggregate_without_identifying_columns_needs_no_ref(lbm: Lbm) -> None:
    result = lbm.inproc("search", "--stream", "web", "--count-by", "host,date",
                 "--from", "2026-03-01", "--to", "2026-03-02")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Each group here covers two people: fewer than MIN_PERSONS, so none is shown without a ref
    # (tests/evidence/test_redteam_search.py shows groups of enough people).
    assert result.stdout.splitlines() == ["host  date  count", "(0 rows)"]
    assert "fewer than 5 people" in result.stderr
    entry = _last(lbm, "search")
    assert entry["refs"] == [] and entry["fields"]["person_level"] is False
    assert entry["fields"]["rows"] == 0 and entry["fields"]["format"] == "table"


@pytest.mark.parametrize(
    ("argv", "code", "why"),
    [
        (["--stream", "web"], 2, "output column 'principal'"),
        (["--stream", "web", "--count-by", "proxy_user"], 2, "output column 'proxy_user'"),
        (["--sql", "SELECT count(*) FROM web"], 2, "--sql"),
        (["--stream", "web", "--ref", REF], 2, "--reason"),
        (["--stream", "web", "--principal", "p2", "--ref", REF, "--reason", "r"], 1,
         "not the subject"),
        (["--stream", "web", "--ref", OTHER_REF, "--reason", "r"], 1, "neither assigned"),
        (["--sql", "WITH w AS (DELETE FROM web RETURNING *) SELECT * FROM w", "--ref", REF,
          "--reason", "r"], 2, "writes"),
        (["--sql", "SELECT * FROM read_csv('/etc/passwd')", "--ref", REF, "--reason", "r"], 2,
         "table function"),
    ],
)  # fmt: skip
def test_refusals_are_clear_and_audited(lbm: Lbm, argv: list[str], code: int, why: str) -> None:
    result = lbm.inproc("search", *argv)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("lbm: error: ") and why in result.stderr
    entry = _last(lbm, "search_refused")
    assert why in entry["fields"]["why"]
    if "--sql" in argv:
        assert entry["fields"]["query"]["sql"] == argv[argv.index("--sql") + 1]
    assert "root:x:0" not in json.dumps(entry)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--stream", "web", "--from", "yesterday"], "--from: not an ISO 8601 date-time"),
        (
            ["--stream", "web", "--to", "2026-03-01T10:00"],
            "--to: '2026-03-01T10:00' has no time zone",
        ),
        (["--stream", "web", "--columns", "ts,url"], "--columns: no column 'url'"),
        (["--stream", "web", "--count-by", "host", "--csv", "--json"], "choose one of"),
        (["--stream", "nosuch"], "Invalid value for '--stream'"),
        (["--principal", "p1"], "give --stream NAME"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_option(lbm: Lbm, argv: list[str], why: str) -> None:
    before = len(_audit(lbm))
    result = lbm.inproc("search", *argv)
    assert result.returncode == 2 and why in result.stderr and result.stdout == ""
    assert len(_audit(lbm)) == before  # a mistyped option is not a search


def test_parquet_output_is_private_outside_the_data_dir_and_never_overwrites(
    lbm: Lbm, tmp_path: Path
) -> None:
    out = tmp_path / "result.parquet"
    argv = ("search", "--stream", "web", "--ref", REF, "--reason", REASON)
    assert lbm.inproc(*argv, "--parquet", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    table = pq.read_table(out)
    assert table.num_rows == 6
    text = json.dumps(table.to_pylist(), default=str)
    for canary in (*THIRD_PARTY, OTHER_REF):
        assert canary not in text
    before = out.read_bytes()
    again = lbm.inproc(*argv, "--parquet", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    assert out.read_bytes() == before
    inside = lbm.data_dir / "metadata" / "stream=web" / "date=2026-03-01" / "hour=09" / "x.parquet"
    refused = lbm.inproc(*argv, "--parquet", str(inside))
    assert refused.returncode == 2 and "inside the data directory" in refused.stderr
    assert not inside.exists()
    assert "inside the data directory" in _last(lbm, "search_refused")["fields"]["why"]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_who_may_search_under_a_ref(lbm: Lbm) -> None:
    registry = lbm.data_dir / "registry.sqlite"
    query = Query(stream="web", ref=REF, reason=REASON)
    for login, why in (
        ("colleague", "neither assigned"),
        ("subjlogin", "is the subject"),
        ("nobody", "not mapped"),
    ):
        with pytest.raises(SearchRefused, match=why):
            authorise(query, registry, login, [])
    acting, scope = authorise(query, registry, "colleague", [INV2_RECIPIENT])
    assert acting is not None and acting.basis == "custodian"
    assert scope is not None and scope.subject == SUBJECT
    assert scope.emails == {"alice@force.example"} and scope.usernames == {"alice"}
    _, again = authorise(query, registry, "root", [])
    assert again is not None and again.pseud == scope.pseud  # the key is kept per REF
    assert DAY1.year == 2026

"""The identity map: resolution, feed validation with line numbers, conflicts, atomic reimport,
one audit entry per load, and re-import on change (for housekeeping)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.policy.identity import (
    FeedError,
    IdentityMap,
    generation,
    import_feed,
    import_if_changed,
    load_identity,
    stored_problems,
)
from appliance.policy.identity_feed import FeedRow, parse_bytes, to_us
from store import AuditError, signing
from store import sqlite as store_sqlite
from store.audit import AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Env:
    """An initialised data dir (real signing key, audit log, registry.sqlite)."""

    def __init__(self, root: Path) -> None:
        self.paths = DataPaths(root)
        root.mkdir(mode=0o700)
        (root / "audit").mkdir()
        self.key = signing.create(self.paths, "gw1")
        self.audit = AuditLog(self.paths, self.key, Clock(fixed=T0), witness=False)
        self.conn = store_sqlite.connect(self.paths.registry)

    def feed(self, name: str, text: str) -> Path:
        path = self.paths.root.parent / name
        path.write_text(text)
        return path

    def load(self, name: str, text: str):
        return import_feed(self.conn, self.feed(name, text), audit=self.audit, actor="tester")

    def audit_entries(self) -> list[dict]:
        log = self.paths.audit_log
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def env(tmp_path: Path):
    e = Env(tmp_path / "data")
    yield e
    e.conn.close()


HEADER = "principal,kind,value,valid_from,valid_to\n"
GOOD = (
    HEADER
    + """\
p1,principal,,,
p1,username,jsmith,,
p1,email,John.Smith@Force.Example,,
p1,alias,js@force.example,,
p1,ip,10.0.0.5,2026-03-02T08:00:00Z,2026-03-02T17:00:00Z
p2,ip,10.0.0.5,2026-03-02T17:00:00Z,
p2,username,amy,,
p3,ip,2001:db8::1,2026-03-01T00:00:00+01:00,2026-03-03T00:00:00Z
p3,ip,fe80::1,2026-03-01T00:00:00Z,
p4,principal,,,
"""
)

RESOLVE_CASES = [
    # (identifier kind, value, at, expected principal)
    ("username", "jsmith", None, "p1"),
    ("username", "JSmith", None, None),  # proxy usernames are exact
    ("username", "amy", None, "p2"),
    ("username", "nobody-here", None, None),
    ("email", "john.smith@force.example", None, "p1"),
    ("email", "JOHN.SMITH@FORCE.EXAMPLE", None, "p1"),
    ("email", "Js@Force.Example", None, "p1"),  # alias, any case
    ("email", "<js@force.example>", None, "p1"),  # as in an SMTP envelope
    ("email", "john.smith+tag@force.example", None, None),  # no +tag folding
    ("email", "john.smith@force.example.org", None, None),
    ("ip", "10.0.0.5", T0 - timedelta(microseconds=1), None),  # before the first lease
    ("ip", "10.0.0.5", T0, "p1"),  # start instant is inside
    ("ip", "10.0.0.5", T0 + timedelta(hours=9) - timedelta(microseconds=1), "p1"),
    ("ip", "10.0.0.5", T0 + timedelta(hours=9), "p2"),  # end instant belongs to the next lease
    ("ip", "10.0.0.5", T0 + timedelta(days=3650), "p2"),  # open lease
    ("ip", "::ffff:10.0.0.5", T0 + timedelta(hours=1), "p1"),  # IPv4-mapped IPv6
    ("ip", "10.0.0.6", T0 + timedelta(hours=1), None),
    ("ip", "2001:db8::1", T0, "p3"),
    ("ip", "2001:0DB8:0000:0000:0000:0000:0000:0001", T0, "p3"),
    ("ip", "2001:db8:0::0:1", T0, "p3"),
    ("ip", "[2001:db8::1]", T0, "p3"),
    ("ip", "2001:db8::1", datetime(2026, 2, 28, 23, 0, tzinfo=UTC), "p3"),  # +01:00 start
    ("ip", "2001:db8::1", datetime(2026, 2, 28, 22, 59, 59, tzinfo=UTC), None),
    ("ip", "2001:db8::1", datetime(2026, 3, 3, tzinfo=UTC), None),
    ("ip", "fe80::1%eth0", T0, "p3"),  # zone id dropped
    ("ip", "not-an-ip", T0, None),
]


@pytest.mark.parametrize(
    ("kind", "value", "at", "expected"),
    RESOLVE_CASES,
    ids=[f"{k}-{v}-{i}" for i, (k, v, _, _) in enumerate(RESOLVE_CASES)],
)
def test_resolve_table(
    env: Env, kind: str, value: str, at: datetime | None, expected: str | None
) -> None:
    report = env.load("feed.csv", GOOD)
    assert (report.loaded, report.bad, report.conflicts) == (10, (), ())
    imap = load_identity(env.conn)
    assert imap.resolve(**{kind: value}, at=at) == expected


def test_resolve_ip_accepts_posix_seconds_and_batches(env: Env) -> None:
    env.load("feed.csv", GOOD)
    imap = load_identity(env.conn)
    t = T0.timestamp()
    assert imap.resolve_ip("10.0.0.5", t) == "p1"
    assert imap.resolve_ip("10.0.0.5", t - 0.000001) is None
    ips = ["10.0.0.5", "10.0.0.5", "2001:DB8::1", "10.9.9.9", "::ffff:10.0.0.5"]
    ats = [T0, T0 + timedelta(hours=10), t, T0, t + 60]
    assert imap.resolve_ip_many(ips, ats) == ["p1", "p2", "p3", None, "p1"]
    with pytest.raises(ValueError, match="differ in length"):
        imap.resolve_ip_many(ips, ats[:2])


def test_resolve_takes_exactly_one_identifier_and_ip_needs_at(env: Env) -> None:
    imap = load_identity(env.conn)
    with pytest.raises(ValueError, match="exactly one"):
        imap.resolve(username="a", email="a@b")
    with pytest.raises(ValueError, match="exactly one"):
        imap.resolve()
    with pytest.raises(ValueError, match="needs at"):
        imap.resolve(ip="10.0.0.1")


def test_empty_registry_resolves_to_nobody(env: Env) -> None:
    imap = load_identity(env.conn)
    assert imap.principals == frozenset()
    assert imap.resolve(username="jsmith") is None
    assert imap.resolve(ip="10.0.0.5", at=T0) is None
    assert generation(env.conn) == 0


# -- bad rows ---------------------------------------------------------------------------------
BAD_CSV = (
    HEADER
    + """\
p1,username,jsmith,,
P9,username,upper,,
p2,ip,10.0.0.300,2026-03-02T08:00:00Z,
p3,ip,10.0.0.7,2026-03-02T08:00:00,
p4,ip,10.0.0.8,,
p5,ip,10.0.0.9,2026-03-02T09:00:00Z,2026-03-02T09:00:00Z
p6,email,not-an-address,,
p7,phone,0123,,
p8,username,has space,,
p9,username,ok,2026-03-02T08:00:00Z,
p10,email,a@b..example,,

p11,username,short
# a comment line
p12,principal,other,,
p13,email,ok@force.example,,
p14,ip,10.0.0.10,yesterday,
"""
)

BAD_EXPECTED = [
    (3, "principal 'P9': must match [a-z0-9][a-z0-9._-]*"),
    (4, "'10.0.0.300' is not an IP address"),
    (5, "valid_from '2026-03-02T08:00:00' has no time zone (write Z for UTC)"),
    (6, "ip row needs valid_from"),
    (7, "valid_to '2026-03-02T09:00:00Z' is not after valid_from"),
    (8, "'not-an-address' is not an email address"),
    (9, "kind 'phone': must be one of principal, username, email, alias, ip"),
    (10, "username 'has space': no spaces"),
    (11, "valid_from and valid_to apply to ip rows only"),
    (12, "domain 'b..example' has an empty label"),
    (14, "expected 5 fields as in the header on line 1, found 3"),
    (16, "a principal row's value must be empty or the principal itself"),
    (18, "valid_from 'yesterday' is not an ISO 8601 date-time"),
]


def test_bad_csv_rows_are_reported_with_line_numbers_and_the_rest_loads(env: Env) -> None:
    report = env.load("bad.csv", BAD_CSV)
    src = str(env.paths.root.parent / "bad.csv")
    assert len(report.bad) == len(BAD_EXPECTED)
    for message, (line, what) in zip(report.bad, BAD_EXPECTED, strict=True):
        assert message.startswith(f"{src}:{line}: "), message
        assert what in message, message
    assert report.loaded == 2
    imap = load_identity(env.conn)
    assert imap.resolve(username="jsmith") == "p1"
    assert imap.resolve(email="OK@force.example") == "p13"
    assert imap.resolve(username="upper") is None
    assert stored_problems(env.conn) == list(report.bad)


def test_unclosed_quote_names_the_lines_it_swallowed(env: Env) -> None:
    text = HEADER + 'p1,username,"jsmith,,\np2,username,amy,,\np3,username,bob,,\n'
    report = env.feed("q.csv", text)
    parsed = parse_bytes(report.read_bytes(), report)
    assert [b.line for b in parsed.bad] == [2]
    assert "row spans lines 2-4: unclosed quote?" in parsed.bad[0].message


def test_non_utf8_row_is_bad_and_the_rest_loads(env: Env) -> None:
    path = env.paths.root.parent / "latin1.csv"
    path.write_bytes(HEADER.encode() + b"p1,username,j\xe9r\xf4me,,\np2,username,amy,,\n")
    report = import_feed(env.conn, path, audit=env.audit, actor="t")
    assert len(report.bad) == 1 and report.bad[0].startswith(f"{path}:2: ")
    assert "not UTF-8" in report.bad[0]
    assert load_identity(env.conn).resolve(username="amy") == "p2"


JSON_ARRAY = """[
  {"principal": "p1", "kind": "username", "value": "jsmith"},
  {"principal": "p2", "kind": "ip", "value": "10.1.1.1",
   "valid_from": "2026-03-02T08:00:00Z", "valid_to": null},
  {"principal": "p3", "kind": "ip", "value": "10.1.1.2", "valid_from": 1234},
  "just a string",
  {"principal": "p4", "kind": "email", "value": "x@force.example", "colour": "red"},
  {"principal": "p5", "kind": "alias",
   "value": "Y@Force.Example"}
]
"""


def test_json_array_bad_items_name_index_and_line(env: Env) -> None:
    report = env.load("feed.json", JSON_ARRAY)
    src = str(env.paths.root.parent / "feed.json")
    assert report.format == "json"
    assert list(report.bad) == [
        f"{src}:5: item 2: valid_from must be a string, not int",
        f"{src}:6: item 3: expected a JSON object, found str",
        f"{src}:7: item 4: unknown field 'colour' (fields: principal, kind, value, valid_from, "
        "valid_to)",
    ]
    imap = load_identity(env.conn)
    assert imap.resolve(username="jsmith") == "p1"
    assert imap.resolve(ip="10.1.1.1", at=T0) == "p2"
    assert imap.resolve(email="y@force.example") == "p5"


def test_json_lines_bad_lines_are_reported_and_the_rest_loads(env: Env) -> None:
    text = (
        '{"principal": "p1", "kind": "username", "value": "jsmith"}\n'
        "\n"
        '{"principal": "p2", "kind": "username", "value": \n'
        '{"principal": "p3", "kind": "ip", "value": "10.2.0.1", '
        '"valid_from": "2026-03-02T08:00:00Z"}\n'
        "[1, 2]\n"
    )
    report = env.load("feed.jsonl", text)
    src = str(env.paths.root.parent / "feed.jsonl")
    assert report.format == "jsonl"
    assert [m.split(": ", 1)[0] for m in report.bad] == [f"{src}:3", f"{src}:5"]
    assert "not valid JSON" in report.bad[0]
    assert "expected a JSON object, found list" in report.bad[1]
    assert load_identity(env.conn).resolve(ip="10.2.0.1", at=T0) == "p3"


FILE_ERRORS = [
    pytest.param(
        "principal,kind,value,valid_form\np1,username,x,\n",
        "line 1: unknown column 'valid_form'",
        id="typo-column",
    ),
    pytest.param("principal,value\np1,x\n", "the CSV header lacks column 'kind'", id="no-kind"),
    pytest.param("principal,kind,kind,value\n", "column 'kind' appears twice", id="dup-column"),
    pytest.param("", "the file is empty", id="empty"),
    pytest.param("# only a comment\n", "no CSV header", id="no-header"),
    pytest.param(HEADER, "no valid rows; the previous identity map is kept", id="header-only"),
    pytest.param(
        HEADER + "P1,username,x,,\n",
        "no valid rows; the previous identity map is kept (1 bad rows, first: ",
        id="all-bad",
    ),
    pytest.param(
        '[{"principal": "p1", "kind": "username", "value": "x"},\n'
        ' {"principal": "p2", "kind": "user',
        "line 2: item 1: not valid JSON",
        id="truncated-array",
    ),
    pytest.param(
        '[{"principal": "p1", "kind": "username", "value": "x"}\n {"principal": "p2"}]',
        "line 2: expected ',' or ']' after item 0",
        id="missing-comma",
    ),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS)
def test_file_level_errors_change_nothing(env: Env, text: str, message: str) -> None:
    env.load("good.csv", GOOD)
    before = env.audit_entries()
    path = env.feed("broken", text)
    with pytest.raises(FeedError) as err:
        import_feed(env.conn, path, audit=env.audit, actor="t")
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert generation(env.conn) == 1
    assert load_identity(env.conn).resolve(username="jsmith") == "p1"
    assert env.audit_entries() == before


def test_missing_file_is_a_clear_error(env: Env) -> None:
    path = env.paths.root.parent / "absent.csv"
    with pytest.raises(FeedError, match=r"absent\.csv: identity feed not found"):
        import_feed(env.conn, path, audit=env.audit, actor="t")


# -- conflicts --------------------------------------------------------------------------------
CONFLICTS = (
    HEADER
    + """\
p1,ip,10.0.0.5,2026-03-02T08:00:00Z,2026-03-02T12:00:00Z
p2,ip,10.0.0.5,2026-03-02T11:00:00Z,2026-03-02T14:00:00Z
p1,ip,10.0.0.6,2026-03-02T08:00:00Z,2026-03-02T12:00:00Z
p1,ip,10.0.0.6,2026-03-02T10:00:00Z,2026-03-02T13:00:00Z
p1,ip,10.0.0.7,2026-03-02T08:00:00Z,2026-03-02T12:00:00Z
p2,ip,10.0.0.7,2026-03-02T12:00:00Z,
p1,username,shared,,
p2,username,shared,,
p1,email,Desk@Force.Example,,
p3,alias,desk@force.example,,
p1,username,solo,,
p1,username,solo,,
"""
)


def test_conflicts_resolve_to_nobody_and_are_reported(env: Env) -> None:
    report = env.load("c.csv", CONFLICTS)
    src = str(env.paths.root.parent / "c.csv")
    assert report.conflicts == (
        f"{src}:3: conflict: ip 10.0.0.5 of p2 is also mapped to p1 (line 2) from "
        "2026-03-02T11:00:00Z to 2026-03-02T12:00:00Z; it resolves to nobody then",
        f"{src}:9: conflict: username shared of p2 is also mapped to p1 (line 8); "
        "it resolves to nobody",
        f"{src}:11: conflict: email desk@force.example of p3 is also mapped to p1 (line 10); "
        "it resolves to nobody",
    )
    imap = load_identity(env.conn)
    at = lambda h, m=0: datetime(2026, 3, 2, h, m, tzinfo=UTC)  # noqa: E731
    assert imap.resolve(ip="10.0.0.5", at=at(10, 59)) == "p1"
    assert imap.resolve(ip="10.0.0.5", at=at(11)) is None
    assert imap.resolve(ip="10.0.0.5", at=at(11, 59)) is None
    assert imap.resolve(ip="10.0.0.5", at=at(12)) == "p2"
    # the same principal's overlapping leases and back-to-back leases are no conflict
    assert imap.resolve(ip="10.0.0.6", at=at(11)) == "p1"
    assert imap.resolve(ip="10.0.0.6", at=at(12, 30)) == "p1"
    assert imap.resolve(ip="10.0.0.7", at=at(11)) == "p1"
    assert imap.resolve(ip="10.0.0.7", at=at(12)) == "p2"
    assert imap.resolve(username="shared") is None
    assert imap.resolve(email="DESK@force.example") is None
    assert imap.resolve(username="solo") == "p1"
    info = imap.describe("p1")
    assert info is not None
    assert [(u["value"], u["conflict"]) for u in info["usernames"]] == [
        ("shared", True),
        ("solo", False),
        ("solo", False),
    ]
    assert json.loads(json.dumps(env.audit_entries()[-1]))["fields"]["conflicts"] == 3


# -- storage, atomic reimport, audit ----------------------------------------------------------
def test_reimport_replaces_the_previous_load(env: Env) -> None:
    env.load("a.csv", GOOD)
    env.load("b.csv", HEADER + "p9,username,newbie,,\n")
    imap = load_identity(env.conn)
    assert imap.principals == frozenset({"p9"})
    assert imap.resolve(username="jsmith") is None
    assert imap.resolve(ip="10.0.0.5", at=T0) is None
    assert imap.generation == 2


def test_one_audit_entry_per_load_with_hash_and_counts_only(env: Env) -> None:
    first = env.load("a.csv", GOOD)
    second = env.load("b.csv", BAD_CSV)
    entries = env.audit_entries()
    assert [e["action"] for e in entries] == ["identity_import", "identity_import"]
    for entry, report, name in ((entries[0], first, "a.csv"), (entries[1], second, "b.csv")):
        path = env.paths.root.parent / name
        assert entry["actor"] == "tester"
        assert entry["fields"] == {
            "file": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "loaded": report.loaded,
            "bad": len(report.bad),
            "conflicts": len(report.conflicts),
        }
    assert entries[1]["fields"]["bad"] == len(BAD_EXPECTED)
    result = verify_log(env.paths, signing.load_public_keys(env.paths))
    assert result.ok, result.problems


def test_failed_audit_rolls_the_load_back(env: Env) -> None:
    env.load("a.csv", GOOD)
    readonly_audit = AuditLog(env.paths, None, Clock(fixed=T0), witness=False)
    with pytest.raises(AuditError):
        import_feed(
            env.conn,
            env.feed("b.csv", HEADER + "p9,username,x,,\n"),
            audit=readonly_audit,
            actor="t",
        )
    imap = load_identity(env.conn)
    assert imap.generation == 1 and imap.resolve(username="jsmith") == "p1"


def test_readers_never_see_half_a_load(env: Env) -> None:
    """A reader polling while imports alternate sees all of feed A or all of feed B."""
    rows = 3000
    feed_a = env.feed(
        "a.csv",
        HEADER
        + "".join(f"pa,ip,10.1.{i // 250}.{i % 250},2026-03-02T00:00:00Z,\n" for i in range(rows)),
    )
    feed_b = env.feed(
        "b.csv",
        HEADER
        + "".join(f"pb,ip,10.2.{i // 250}.{i % 250},2026-03-02T00:00:00Z,\n" for i in range(rows)),
    )
    import_feed(env.conn, feed_a, audit=env.audit, actor="t")
    stop = threading.Event()
    seen: list[tuple[frozenset[str], int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        conn = store_sqlite.connect(env.paths.registry, readonly=True)
        try:
            while not stop.is_set():
                imap = load_identity(conn)
                seen.append((imap.principals, len(imap.rows)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            import_feed(env.conn, feed_b if i % 2 == 0 else feed_a, audit=env.audit, actor="t")
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert len(seen) > 3
    assert {s for s in seen} <= {(frozenset({"pa"}), rows), (frozenset({"pb"}), rows)}


def test_load_inside_a_callers_read_transaction(env: Env) -> None:
    env.load("a.csv", GOOD)
    env.conn.execute("BEGIN")
    try:
        assert load_identity(env.conn).resolve(username="amy") == "p2"
    finally:
        env.conn.execute("COMMIT")


# -- re-import on change (housekeeping) -------------------------------------------------------
def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_import_if_changed_imports_once_per_content_change(env: Env) -> None:
    feed = env.feed("feed.csv", GOOD)
    _age(feed, 60)
    state: dict = {}
    kwargs = {"audit": env.audit, "actor": "housekeeping"}
    first = import_if_changed(env.paths, feed, state, **kwargs)
    assert first is not None and first["loaded"] == 10 and first["file"] == str(feed)
    assert import_if_changed(env.paths, feed, state, **kwargs) is None
    _age(feed, 30)  # touched, same content: hashed, not re-imported
    assert import_if_changed(env.paths, feed, state, **kwargs) is None
    assert import_if_changed(env.paths, feed, {}, **kwargs) is None  # a restarted daemon
    assert len(env.audit_entries()) == 1
    feed.write_text(GOOD + "p7,username,late,,\n")
    assert import_if_changed(env.paths, feed, state, **kwargs) is None  # still settling
    _age(feed, 10)
    second = import_if_changed(env.paths, feed, state, **kwargs)
    assert second is not None and second["loaded"] == 11
    assert load_identity(env.conn).resolve(username="late") == "p7"
    assert len(env.audit_entries()) == 2


def test_import_if_changed_reports_a_broken_or_missing_feed_once(env: Env) -> None:
    feed = env.feed("feed.csv", GOOD)
    _age(feed, 60)
    state: dict = {}
    kwargs = {"audit": env.audit, "actor": "housekeeping"}
    assert import_if_changed(env.paths, feed, state, **kwargs) is not None
    feed.write_text("principal,kind,value,valid_form\n")
    _age(feed, 10)
    with pytest.raises(FeedError, match="unknown column 'valid_form'"):
        import_if_changed(env.paths, feed, state, **kwargs)
    assert import_if_changed(env.paths, feed, state, **kwargs) is None
    feed.unlink()
    with pytest.raises(FeedError, match="identity feed not found; the previous map is kept"):
        import_if_changed(env.paths, feed, state, **kwargs)
    assert import_if_changed(env.paths, feed, state, **kwargs) is None
    assert load_identity(env.conn).resolve(username="jsmith") == "p1"
    assert len(env.audit_entries()) == 1


# -- properties -------------------------------------------------------------------------------
BASE = to_us(datetime(2026, 1, 1, tzinfo=UTC))
IPS = ["10.0.0.1", "10.0.0.2", "2001:db8::7"]
PRINCIPALS = ["p1", "p2", "p3", "p4"]


@st.composite
def disjoint_leases(draw: st.DrawFn) -> list[FeedRow]:
    rows: list[FeedRow] = []
    for ip in IPS:
        cuts = sorted(draw(st.sets(st.integers(0, 10**9), min_size=0, max_size=12)))
        for start, end in zip(cuts[::2], cuts[1::2], strict=False):
            rows.append(
                FeedRow(
                    len(rows) + 2,
                    draw(st.sampled_from(PRINCIPALS)),
                    "ip",
                    ip,
                    BASE + start,
                    BASE + end,
                )
            )
    return rows


@given(
    leases=disjoint_leases(),
    probes=st.lists(
        st.tuples(st.sampled_from(IPS), st.integers(-10, 10**9 + 10)), min_size=1, max_size=40
    ),
)
@settings(max_examples=300, deadline=None)
def test_disjoint_leases_resolve_exactly_to_their_owner(leases, probes) -> None:
    imap = IdentityMap.build(leases)
    assert imap.conflicts == ()
    for ip, offset in probes:
        instant = BASE + offset
        owners = [
            r.principal
            for r in leases
            if r.value == ip
            and r.valid_from is not None
            and r.valid_to is not None
            and r.valid_from <= instant < r.valid_to
        ]
        expected = owners[0] if owners else None
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=instant)
        assert imap.resolve(ip=ip, at=at) == expected
    # lease boundaries themselves
    for row in leases:
        assert row.valid_from is not None and row.valid_to is not None
        assert imap.resolve_ip(row.value, _dt(row.valid_from)) == row.principal
        assert imap.resolve_ip(row.value, _dt(row.valid_to - 1)) == row.principal


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@st.composite
def any_leases(draw: st.DrawFn) -> list[FeedRow]:
    rows: list[FeedRow] = []
    for i in range(draw(st.integers(0, 15))):
        start = draw(st.integers(0, 1000))
        end = draw(st.one_of(st.integers(start + 1, 1100), st.just(2**63 - 1)))
        rows.append(
            FeedRow(
                i + 2,
                draw(st.sampled_from(PRINCIPALS)),
                "ip",
                draw(st.sampled_from(IPS[:2])),
                BASE + start,
                end if end == 2**63 - 1 else BASE + end,
            )
        )
    return rows


@given(leases=any_leases(), offsets=st.lists(st.integers(-5, 1200), min_size=1, max_size=30))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_overlapping_leases_of_different_principals_resolve_to_nobody(leases, offsets) -> None:
    """Oracle: an IP at an instant resolves to its holder iff exactly one principal holds it."""
    imap = IdentityMap.build(leases)
    for ip in IPS[:2]:
        for offset in offsets:
            instant = BASE + offset
            holders = {
                r.principal
                for r in leases
                if r.value == ip
                and r.valid_from is not None
                and r.valid_to is not None
                and r.valid_from <= instant < r.valid_to
            }
            expected = next(iter(holders)) if len(holders) == 1 else None
            assert imap.resolve_ip(ip, _dt(instant)) == expected
    overlapping = {
        (a.line, b.line)
        for a in leases
        for b in leases
        if a.line < b.line
        and a.value == b.value
        and a.principal != b.principal
        and a.valid_from is not None
        and a.valid_to is not None
        and b.valid_from is not None
        and b.valid_to is not None
        and a.valid_from < b.valid_to
        and b.valid_from < a.valid_to
    }
    assert {c.lines for c in imap.conflicts} == overlapping


def test_sqlite_tables_are_prefixed(env: Env) -> None:
    env.load("a.csv", GOOD)
    conn = sqlite3.connect(env.paths.registry)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert names and all(n.startswith("identity_") for n in names)

"""Retention end to end on one data dir: holds and reviews (with their refusals), what is due,
`--apply` (partitions deleted, archives crypto-shredded), a hold blocking removal (the attack),
`lbm archive verify` after a purge on record and after a deletion without one, `lbm auth list`
flagging review-due archives, and the daily housekeeping check.

Timeline (fake clock): four authorisations granted 2025-10-01 expire 2026-01-01; ACT-1 is
granted 2026-02-20 and still in force. `[retention]` keeps archives 30 days after the end,
reviews every 10 days, web metadata 30 days, flow 10 days. The tests run in file order.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lbm_testing import INV_RECIPIENT, Lbm, grant_argv

from appliance.evidence import retention, retention_apply
from store import agefile as age
from store import investigators as inv_table
from store import signing
from store import sqlite as store_sqlite
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths
from store.schemas import schema

T0 = "2025-10-01T09:00:00Z"
NOW = "2026-03-01T12:00:00Z"
ENDED = ("OLD-1", "HELD-1", "RET-1")
CANARY = b"CANARY-retention-content-7c1e"
SETTINGS = retention.Settings(
    {"web": 30, "email": 30, "flow": 10, "dns": 10}, default_days=30, review_days=10
)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _archive(paths: DataPaths, refs: tuple[str, ...], when: str) -> None:
    key = signing.load(paths)
    clock = Clock(fixed=_at(when))
    archive = Archive(paths, key, clock, audit=AuditLog(paths, key, clock, witness=False))
    for ref in refs:
        sink = archive.open_record(ref, "web", "p12345", when, "request")
        sink.write(b"GET /secret HTTP/1.1\r\nX-Canary: " + CANARY + b"\r\n\r\n")
        sink.close()
    archive.close()


def _partition(paths: DataPaths, stream: str, day: str, refs: list[str]) -> Path:
    directory = paths.metadata / f"stream={stream}" / f"date={day}" / "hour=09"
    directory.mkdir(parents=True)
    row: dict[str, object] = {"ts": _at(f"{day}T09:00:00Z"), "refs": refs, "record_ids": []}
    for f in schema(stream):  # every other required column: a plain value of its type
        if f.name not in row and not f.nullable:
            t = f.type
            row[f.name] = [] if pa.types.is_list(t) else "x" if pa.types.is_string(t) else 0
    table = pa.Table.from_pylist([row], schema=schema(stream))
    pq.write_table(table, directory / "gw__test__000001.parquet")
    return directory.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lbm, DataPaths]:
    root = tmp_path_factory.mktemp("retention")
    lbm = Lbm(root / "data")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    text = config.read_text().replace("fake_clock = false", "fake_clock = true")
    for old, new in (("default_days = 365", "default_days = 30"), ("review_days = 90",
        "review_days = 10"), ("web_days = 180", "web_days = 30"), ("flow_days = 90",
        "flow_days = 10")):  # fmt: skip
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    paths = DataPaths(lbm.data_dir)
    conn = store_sqlite.connect(paths.registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", T0, login="root")
    inv_table.add(conn, "inv2", age.generate()[1], "p902", T0, login="nobody")
    conn.close()
    # setup in process (click's runner): the grants are not what is tested here
    role = "head_of_professional_standards"
    officer = ["officer", "add", "p100", "--name", "Pat Hops", "--role", role, "--rank",
               "superintendent", "--from", T0]  # fmt: skip
    assert _cli(lbm, *officer, now=T0)[0] == 0
    for ref in ENDED:
        assert _cli(lbm, *grant_argv(ref), now=T0)[0] == 0
    assert _cli(lbm, *grant_argv("OTHER-1", investigator="inv2"), now=T0)[0] == 0
    long_argv = grant_argv("LONG-1", extra=("--retention-days", "400"))
    assert _cli(lbm, *long_argv, now=T0)[0] == 0
    _archive(paths, (*ENDED, "LONG-1"), "2025-10-02T10:00:00Z")
    assert _cli(lbm, *grant_argv("ACT-1"), now="2026-02-20T09:00:00Z")[0] == 0
    _archive(paths, ("ACT-1",), "2026-02-21T10:00:00Z")
    _partition(paths, "web", "2026-01-01", ["HELD-1"])
    _partition(paths, "web", "2026-01-02", [])
    _partition(paths, "web", "2026-02-25", [])
    _partition(paths, "flow", "2026-02-10", [])
    _partition(paths, "flow", "2026-02-25", [])
    return lbm, paths


def _cli(lbm: Lbm, *args: str, now: str = NOW) -> tuple[int, str]:
    """An edge case in process, same command line as `lbm`: the exit code and stdout, or
    stderr when it failed."""
    result = lbm.inproc(*args, env={"LBM_FAKE_NOW": now})
    return result.returncode, result.stdout if result.returncode == 0 else result.stderr


def _audit(paths: DataPaths, action: str) -> list[dict]:
    lines = paths.audit_log.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


def _tree_hash(*dirs: Path) -> str:
    digest = hashlib.sha256()
    for d in dirs:
        for p in sorted(d.rglob("*")):
            digest.update(str(p).encode() + (p.read_bytes() if p.is_file() else b"/"))
    return digest.hexdigest()


def test_hold_and_review_refusals_are_clear_and_audited(env: tuple[Lbm, DataPaths]) -> None:
    lbm, paths = env
    # an investigator not assigned to OTHER-1 cannot release (or place) a hold on it
    code, out = _cli(lbm, "archive", "hold", "OTHER-1", "--reason", "x")
    assert code == 1 and "neither assigned to OTHER-1" in out
    refused = _audit(paths, "retention_refused")
    assert refused[-1]["refs"] == ["OTHER-1"] and refused[-1]["fields"]["what"] == "hold"
    assert _cli(lbm, "archive", "hold", "NOPE-9", "--reason", "x")[0] == 1
    code, out = _cli(lbm, "archive", "hold", "../etc", "--reason", "x")
    assert code == 2 and "must match" in out
    code, out = _cli(lbm, "archive", "hold", "HELD-1", "--reason", "  ")
    assert code == 2 and "--reason" in out
    code, out = _cli(lbm, "archive", "release", "HELD-1", "--reason", "nothing held")
    assert code == 1 and "not held" in out
    # an archive still recording cannot be reviewed for deletion
    code, out = _cli(lbm, "retention", "review", "ACT-1", "--decision", "delete", "--reason", "r")
    assert code == 1 and "still in force" in out
    assert not _audit(paths, "evidence_hold") and not _audit(paths, "retention_review")


def test_hold_and_retain_decision_are_recorded(env: tuple[Lbm, DataPaths]) -> None:
    lbm, paths = env
    now = {"LBM_FAKE_NOW": NOW}
    lbm("archive", "hold", "held-1", "--reason", "civil claim pending", env=now, check=True)
    code, out = _cli(lbm, "archive", "hold", "HELD-1", "--reason", "twice")
    assert code == 1 and "already held" in out
    review_argv = ("retention", "review", "RET-1", "--decision", "retain", "--reason", "appeal due")
    assert _cli(lbm, *review_argv)[0] == 0
    (hold,) = _audit(paths, "evidence_hold")
    assert hold["refs"] == ["HELD-1"] and hold["fields"]["reason"] == "civil claim pending"
    assert hold["fields"]["investigator"] == "inv1"
    (review,) = _audit(paths, "retention_review")
    assert review["fields"]["decision"] == "retain" and review["fields"]["ref"] == "RET-1"
    assert review["fields"]["reason"] == "appeal due"


def test_auth_list_shows_archives_whose_review_is_due(env: tuple[Lbm, DataPaths]) -> None:
    lbm, _ = env
    code, out = _cli(lbm, "auth", "list", "--json")
    assert code == 0, out
    listed = {d["ref"]: d for d in json.loads(out)}
    # ended 2026-01-01, never reviewed: due since 2026-01-11 (LONG-1 too, though its archive
    # is kept 400 days: reviews are periodic); RET-1 was just reviewed;
    # OTHER-1 has no archive; ACT-1 is in force
    assert set(listed) == {"OLD-1", "HELD-1", "LONG-1", "ACT-1"}
    for ref in ("OLD-1", "HELD-1", "LONG-1"):
        assert "retention_review_due" in listed[ref]["flags"]
        assert listed[ref]["retention_review_due"] == "2026-01-11T09:00:00Z"
    assert "retention_review_due" not in listed["ACT-1"]["flags"]


def test_dry_run_lists_what_is_due_and_removes_nothing(env: tuple[Lbm, DataPaths]) -> None:
    lbm, paths = env
    before = _tree_hash(paths.metadata, paths.archive, paths.keystore)
    code, out = _cli(lbm, "retention", "run", "--json")
    assert code == 0, out
    data = json.loads(out)
    status = {a["ref"]: a["status"] for a in data["archives"]}
    # OTHER-1 recorded nothing: only its wrapped authorisation key is left to destroy
    assert status == {"OLD-1": "due", "HELD-1": "held", "RET-1": "retained", "OTHER-1": "due"}
    parts = {(p["stream"], p["date"]): p["status"] for p in data["metadata"]}
    assert parts == {
        ("web", "2026-01-01"): "held",  # a row of HELD-1
        ("web", "2026-01-02"): "due",
        ("flow", "2026-02-10"): "due",
    }
    assert data["applied"] is None
    assert _tree_hash(paths.metadata, paths.archive, paths.keystore) == before
    run = _audit(paths, "retention_run")[-1]
    assert run["fields"]["applied"] is False and run["refs"] == ["OLD-1", "OTHER-1"]
    assert run["fields"]["archives_due"] == 2 and run["fields"]["metadata_partitions_due"] == 2


def test_apply_with_a_hold_in_place_removes_nothing_of_that_ref(
    env: tuple[Lbm, DataPaths],
) -> None:
    lbm, paths = env
    kept = _tree_hash(paths.archive / "HELD-1", paths.keystore / "HELD-1")
    held_partition = paths.metadata / "stream=web" / "date=2026-01-01"
    lbm("retention", "run", "--apply", env={"LBM_FAKE_NOW": NOW}, check=True)
    assert _tree_hash(paths.archive / "HELD-1", paths.keystore / "HELD-1") == kept
    assert held_partition.is_dir()
    # OLD-1 crypto-shredded: no wrapped key left, then no segment file
    assert not (paths.archive / "OLD-1").exists()
    assert not list((paths.keystore / "OLD-1").glob("*.age"))
    assert (paths.keystore / "OLD-1" / "destroyed").exists()
    for ref in ("RET-1", "ACT-1"):
        assert (paths.keystore / ref / "auth.age").exists()
    assert not (paths.metadata / "stream=web" / "date=2026-01-02").exists()
    assert not (paths.metadata / "stream=flow" / "date=2026-02-10").exists()
    assert (paths.metadata / "stream=flow" / "date=2026-02-25").is_dir()
    purges = {e["fields"].get("stream") or e["fields"]["ref"]: e for e in _audit(paths, "purge")}
    assert purges["web"]["fields"]["dates"] == ["2026-01-02"]
    assert purges["web"]["fields"]["files"] == 1
    archive = purges["OLD-1"]["fields"]
    assert archive["crypto_shredded"] is True and archive["segments"] == ["OLD-1/000001"]
    assert archive["keys_destroyed"] == 2 and purges["OLD-1"]["refs"] == ["OLD-1"]
    assert CANARY.decode() not in paths.audit_log.read_text()
    # the purge is on record, so verify accepts the archive's absence
    verified = lbm("archive", "verify", env={"LBM_FAKE_NOW": NOW})
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_retain_lasts_until_the_next_review_then_release_lets_it_go(
    env: tuple[Lbm, DataPaths],
) -> None:
    lbm, paths = env
    conn = store_sqlite.connect(paths.registry)
    try:
        early = retention.plan(conn, paths, SETTINGS, _at("2026-03-10T12:00:00Z"))
        late = retention.plan(conn, paths, SETTINGS, _at("2026-03-11T12:00:00Z"))
    finally:
        conn.close()
    assert {a.ref: a.status for a in early.archives}["RET-1"] == "retained"
    assert {a.ref: a.status for a in late.archives}["RET-1"] == "due"
    # LONG-1 asked for 400 days after its end (2026-01-01): kept until 2027-02-05 ...
    assert {a.ref: a.status for a in late.archives}["LONG-1"] == "kept"
    # ... unless a review decides to delete it sooner; a hold still comes first
    review = ("retention", "review", "LONG-1", "--decision", "delete", "--reason", "no case")
    assert _cli(lbm, *review)[0] == 0
    assert _cli(lbm, "archive", "hold", "LONG-1", "--reason", "wait")[0] == 0
    conn = store_sqlite.connect(paths.registry)
    try:
        held = {a.ref: a for a in retention.plan(conn, paths, SETTINGS, _at(NOW)).archives}
        assert held["LONG-1"].status == "held"
        assert _cli(lbm, "archive", "release", "LONG-1", "--reason", "go")[0] == 0
        due = {a.ref: a for a in retention.plan(conn, paths, SETTINGS, _at(NOW)).archives}
    finally:
        conn.close()
    assert due["LONG-1"].status == "due" and "review decision delete" in due["LONG-1"].why
    code, _ = _cli(lbm, "archive", "release", "HELD-1", "--reason", "claim settled")
    assert code == 0
    release = _audit(paths, "evidence_release")[-1]
    assert release["fields"]["reason"] == "claim settled" and release["refs"] == ["HELD-1"]
    code, out = _cli(lbm, "retention", "run", "--apply", "--json")
    assert code == 0, out
    assert json.loads(out)["applied"]["archives_shredded"] == ["HELD-1", "LONG-1"]
    assert not (paths.metadata / "stream=web" / "date=2026-01-01").exists()


def test_housekeeping_checks_daily_and_applies_only_with_auto_apply(
    env: tuple[Lbm, DataPaths],
) -> None:
    lbm, paths = env
    day = {"LBM_FAKE_NOW": "2026-03-12T08:00:00Z"}  # the daemon itself runs in process here
    runs = len(_audit(paths, "retention_run"))
    for _ in range(2):
        assert _cli(lbm, "housekeeping", "run", "--once", now=day["LBM_FAKE_NOW"])[0] == 0
    checks = _audit(paths, "retention_run")[runs:]
    assert [c["fields"]["trigger"] for c in checks] == ["housekeeping"]  # once that day
    assert checks[0]["fields"]["applied"] is False and checks[0]["refs"] == ["RET-1"]
    assert (paths.keystore / "RET-1" / "auth.age").exists()
    config = paths.config
    config.write_text(config.read_text().replace("auto_apply = false", "auto_apply = true"))
    lbm("housekeeping", "run", "--once", env={"LBM_FAKE_NOW": "2026-03-13T08:00:00Z"}, check=True)
    assert not (paths.keystore / "RET-1" / "auth.age").exists()
    assert not (paths.archive / "RET-1").exists()


def test_verify_still_fails_for_an_archive_deleted_without_record(
    env: tuple[Lbm, DataPaths],
) -> None:
    lbm, paths = env
    (paths.keystore / "ACT-1" / "000001.age").unlink()
    result = lbm("archive", "verify", env={"LBM_FAKE_NOW": NOW})
    assert result.returncode == 1
    assert "ACT-1/000001: wrapped segment key" in result.stdout
    assert "OLD-1" not in result.stdout and "HELD-1" not in result.stdout


def test_daily_state_survives_a_restart(env: tuple[Lbm, DataPaths]) -> None:
    _, paths = env
    key = signing.load(paths)
    clock = Clock(fixed=_at("2026-03-13T20:00:00Z"))
    audit = AuditLog(paths, key, clock, witness=False)
    conn = store_sqlite.connect(paths.registry)
    try:
        again = retention_apply.daily(
            conn, paths, SETTINGS, clock.now(), audit, "root", auto_apply=True
        )
    finally:
        conn.close()
    assert again is None  # 2026-03-13 was checked by the daemon before

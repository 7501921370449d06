"""Housekeeping records each expiry once in the audit log (urgent lapses included)."""

from __future__ import annotations

import json

from lbm_testing import INV_RECIPIENT, Lbm, grant_argv

from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths


def grant(lbm: Lbm, ref: str, command: str, when: str) -> None:
    argv = grant_argv(ref, command=command)
    lbm(*argv, env={"LBM_FAKE_NOW": when}, check=True)


def expired_entries(lbm: Lbm) -> list[dict]:
    log = lbm.data_dir / "audit" / "audit.jsonl"
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    return [e for e in entries if e["action"] == "auth_expired"]


def test_expiries_are_audited_once_each(lbm: Lbm) -> None:
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", "2026-01-01T00:00:00Z")
    conn.close()
    grant(lbm, "STD-1", "grant", "2026-01-31T10:00:00Z")
    grant(lbm, "URG-1", "urgent", "2026-01-31T10:00:00Z")
    grant(lbm, "CAN-1", "grant", "2026-01-31T10:00:00Z")
    lbm(
        "auth",
        "cancel",
        "CAN-1",
        "--reason",
        "no longer justified",
        env={"LBM_FAKE_NOW": "2026-02-01T00:00:00Z"},
        check=True,
    )

    def housekeeping(when: str) -> None:
        lbm("housekeeping", "run", "--once", env={"LBM_FAKE_NOW": when}, check=True)

    housekeeping("2026-02-03T09:59:59Z")  # urgent lapses at +72 h: not yet
    assert expired_entries(lbm) == []
    housekeeping("2026-02-03T10:00:00Z")
    (urgent,) = expired_entries(lbm)
    assert urgent["refs"] == ["URG-1"] and urgent["fields"]["urgent_unratified"] is True
    assert urgent["ts"] == "2026-02-03T10:00:00Z" and urgent["fake_clock"] is True
    housekeeping("2026-04-30T09:59:59Z")  # 31 Jan + 3 months clamps to 30 Apr
    assert len(expired_entries(lbm)) == 1
    housekeeping("2026-04-30T10:00:00Z")
    housekeeping("2026-05-01T00:00:00Z")
    entries = expired_entries(lbm)
    assert [e["refs"] for e in entries] == [["URG-1"], ["STD-1"]]  # cancelled one: not expired
    assert entries[1]["fields"]["expiry"] == "2026-04-30T10:00:00Z"
    assert lbm("audit", "verify").returncode == 0

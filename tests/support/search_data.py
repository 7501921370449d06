"""Metadata for the search tests, written through the real MetadataWriter.

The subject of REF is `p1` (user `alice`, alice@force.example, 10.0.0.1); `p2` (bob, the
subject of another authorisation, OTHER_REF) and an unresolved proxy user are third parties whose
identifiers carry canaries that a person-level search under REF must never show in clear.
Rows span 2026-03-01 and 2026-03-02; the dns stream is left empty on purpose.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from store.metadata import MetadataWriter
from store.paths import DataPaths

REF = "AUTH-S-1"
OTHER_REF = "AUTH-S-2"
SUBJECT = "p1"
DAY1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
# Third-party identifiers: none may appear in clear in a person-level search under REF.
THIRD_PARTY = ("p2", "10.0.0.2", "bob-canary", "ghost-canary", "10.0.0.3",
               "bob@force.example", "stranger@outside.example", "ext@outside.example")  # fmt: skip
SUBJECT_VALUES = ("p1", "10.0.0.1", "alice", "alice@force.example")
FEED = (
    "principal,kind,value,valid_from,valid_to\n"
    "p1,username,alice,,\np1,email,alice@force.example,,\n"
    "p2,username,bob-canary,,\np2,email,bob@force.example,,\n"
)


def _at(day: dt.datetime, hour: int, minute: int = 0) -> dt.datetime:
    return day + dt.timedelta(hours=hour, minutes=minute)


def web_rows() -> dict[str, list[Any]]:
    rows = [
        # ts, principal, client_ip, proxy_user, host, refs, record_ids
        (_at(DAY1, 9), "p1", "10.0.0.1", "alice", "evidence.example", [REF], [f"{REF}/000001/1"]),
        (_at(DAY1, 9, 5), "p2", "10.0.0.2", "bob-canary", "news.example", [OTHER_REF],
         [f"{OTHER_REF}/000001/1"]),
        (_at(DAY1, 10), "p2", "10.0.0.2", "bob-canary", "evidence.example", [OTHER_REF], []),
        (_at(DAY1, 11), None, "10.0.0.3", "ghost-canary", "news.example", [], []),
        (_at(DAY2, 9), "p1", "10.0.0.1", "alice", "www.evidence.example", [REF], []),
        (_at(DAY2, 10), "p2", "10.0.0.2", "bob-canary", "news.example", [OTHER_REF], []),
    ]  # fmt: skip
    cols = ("ts", "principal", "client_ip", "proxy_user", "host", "refs", "record_ids")
    out: dict[str, list[Any]] = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    out["uid"] = [f"C{i}" for i in range(len(rows))]
    out["server_ip"] = ["192.0.2.10"] * len(rows)
    out["community_id"] = [f"1:cid{i}" for i in range(len(rows))]
    out["scheme"] = ["https"] * len(rows)
    # bob's rows are `passed` (a do-not-decrypt host): a third party's rows intercepted under
    # another REF are left out of a search under REF (tests/evidence/test_redteam_search.py).
    out["decision"] = ["intercepted" if REF in r[5] else "passed" for r in rows]
    return out


def email_rows() -> dict[str, list[Any]]:
    rows = [
        # ts, principal, direction, mail_from, rcpt_to, client_ip, auth_user
        (_at(DAY1, 12), "p1", "outbound", "alice@force.example", "ext@outside.example",
         "10.0.0.1", "alice"),
        (_at(DAY1, 13), "p1", "inbound", "stranger@outside.example", "alice@force.example",
         "198.51.100.7", None),
        (_at(DAY1, 14), "p2", "outbound", "bob@force.example", "alice@force.example",
         "10.0.0.2", "bob-canary"),
    ]  # fmt: skip
    cols = ("ts", "principal", "direction", "mail_from", "rcpt_to", "client_ip", "auth_user")
    out: dict[str, list[Any]] = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    out["uid"] = [f"M{i}" for i in range(len(rows))]
    out["outcome"] = ["queued"] * len(rows)
    return out


def flow_rows() -> dict[str, list[Any]]:
    return {
        "ts": [_at(DAY1, 9), _at(DAY1, 9, 5)],
        "uid": ["F0", "F1"],
        "principal": ["p1", "p2"],
        "client_ip": ["10.0.0.1", "10.0.0.2"],
        "server_ip": ["192.0.2.10", "192.0.2.10"],
        "community_id": ["1:cid0", "1:cid1"],
        "proto": ["tcp", "tcp"],
    }


def write_metadata(paths: DataPaths) -> None:
    for stream, columns in (("web", web_rows()), ("email", email_rows()), ("flow", flow_rows())):
        writer = MetadataWriter(stream, "test", paths=paths, gateway="gw1")
        writer.append_batch(columns)
        writer.close()

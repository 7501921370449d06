"""`lbm identity import | show | resolve | status` and housekeeping's re-import, through the real
CLI in subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from lbm_testing import Lbm

from appliance.cli.app import FAKE_CLOCK_WARNING

FEED = """\
principal,kind,value,valid_from,valid_to
p1,username,jsmith,,
p1,email,John.Smith@Force.Example,,
p1,alias,js@force.example,,
p1,ip,10.0.0.5,2026-03-02T08:00:00Z,2026-03-02T17:00:00Z
p1,ip,10.0.0.9,2026-03-01T08:00:00Z,2026-03-01T17:00:00Z
p1,ip,2001:db8::5,2026-03-03T08:00:00Z,
p2,ip,10.0.0.5,2026-03-02T16:00:00Z,
p2,username,amy,,
p3,ip,10.0.0.7,tomorrow,
P4,username,shout,,
"""


def without_fake_clock_warning(stderr: str) -> str:
    """stderr less the fake-clock announcement (the `lbm` fixture enables the fake clock)."""
    return "".join(
        line for line in stderr.splitlines(keepends=True) if line.rstrip() != FAKE_CLOCK_WARNING
    )


def load_partly(lbm: Lbm, feed: Path) -> None:
    """Import FEED, whose two bad rows make the import exit 1 with its valid rows loaded."""
    result = lbm("identity", "import", str(feed))
    assert result.returncode == 1 and "8 rows, 2 principals, 2 bad rows" in result.stdout, result


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    path = tmp_path / "feed.csv"
    path.write_text(FEED)
    return path


def test_import_prints_counts_and_each_bad_row_with_its_line(lbm: Lbm, feed: Path) -> None:
    # the valid rows are loaded, the bad ones listed, and the exit status says it was partial
    result = lbm("identity", "import", str(feed))
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(
        f"identity map loaded from {feed}: 8 rows, 2 principals, 2 bad rows, 1 conflicts"
    )
    assert without_fake_clock_warning(result.stderr).splitlines() == [
        f"{feed}:10: valid_from 'tomorrow' is not an ISO 8601 date-time",
        f"{feed}:11: principal 'P4': must match [a-z0-9][a-z0-9._-]* (at most 128)",
        f"{feed}:8: conflict: ip 10.0.0.5 of p2 is also mapped to p1 (line 5) from "
        "2026-03-02T16:00:00Z to 2026-03-02T17:00:00Z; it resolves to nobody then",
    ]
    entries = [
        json.loads(x) for x in (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    assert entries[-1]["action"] == "identity_import"
    assert entries[-1]["fields"] == {
        "file": str(feed),
        "sha256": hashlib.sha256(feed.read_bytes()).hexdigest(),
        "loaded": 8,
        "bad": 2,
        "conflicts": 1,
    }
    assert lbm("audit", "verify").returncode == 0


def test_import_json_output(lbm: Lbm, tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(
        '{"principal": "p1", "kind": "username", "value": "jsmith"}\n'
        '{"principal": "p2", "kind": "username"}\n'
    )
    result = lbm("identity", "import", str(path), "--json")
    assert result.returncode == 1, result.stderr  # one bad row: loaded in part
    data = json.loads(result.stdout)
    assert data["format"] == "jsonl"
    assert (data["loaded"], data["bad"], data["conflicts"], data["generation"]) == (1, 1, 0, 1)
    assert data["bad_rows"] == [f"{path}:2: username row has an empty value"]


IMPORT_ERRORS = [
    pytest.param(None, "identity feed not found", id="missing"),
    pytest.param(
        "principal,kind,value,valid_form\n",
        "line 1: unknown column 'valid_form' in the CSV header",
        id="bad-header",
    ),
    pytest.param(
        "principal,kind,value\nBAD,username,x\n",
        "no valid rows; the previous identity map is kept",
        id="no-valid-rows",
    ),
    pytest.param(
        '[{"principal": "p1", "kind": "username", "value": "x"},',
        "item 1: not valid JSON",
        id="truncated-json",
    ),
]


@pytest.mark.parametrize(("text", "message"), IMPORT_ERRORS)
def test_import_refusals_exit_1_and_keep_the_previous_map(
    lbm: Lbm, feed: Path, tmp_path: Path, text: str | None, message: str
) -> None:
    load_partly(lbm, feed)
    bad = tmp_path / "bad-feed"
    if text is not None:
        bad.write_text(text)
    result = lbm("identity", "import", str(bad))
    assert result.returncode == 1
    assert without_fake_clock_warning(result.stderr).startswith(f"lbm: error: {bad}: ")
    assert message in result.stderr
    assert lbm("identity", "resolve", "--username", "jsmith").stdout.strip() == "p1"


def test_import_needs_an_initialised_data_dir(tmp_path: Path, feed: Path) -> None:
    result = Lbm(tmp_path / "nowhere")("identity", "import", str(feed))
    assert result.returncode == 2
    assert "not an initialised data directory (run `lbm init`)" in result.stderr


def test_show_lists_identifiers_and_lease_states(lbm: Lbm, feed: Path) -> None:
    load_partly(lbm, feed)
    env = {"LBM_FAKE_NOW": "2026-03-02T12:00:00Z"}
    data = json.loads(lbm("identity", "show", "p1", "--json", env=env, check=True).stdout)
    assert [u["value"] for u in data["usernames"]] == ["jsmith"]
    assert [e["value"] for e in data["emails"]] == ["john.smith@force.example"]
    assert [a["value"] for a in data["aliases"]] == ["js@force.example"]
    assert [(x["ip"], x["state"], x["valid_to"]) for x in data["leases"]] == [
        ("10.0.0.5", "current", "2026-03-02T17:00:00Z"),
        ("10.0.0.9", "past", "2026-03-01T17:00:00Z"),
        ("2001:db8::5", "future", None),
    ]
    assert len(data["conflicts"]) == 1 and "10.0.0.5" in data["conflicts"][0]
    text = lbm("identity", "show", "p1", env=env, check=True).stdout
    assert "10.0.0.9  2026-03-01T08:00:00Z .. 2026-03-01T17:00:00Z  [past] (line 6)" in text
    assert "2001:db8::5  2026-03-03T08:00:00Z .. open  [future] (line 7)" in text
    missing = lbm("identity", "show", "p9")
    assert missing.returncode == 1
    assert "principal 'p9' is not in the identity map" in missing.stderr


RESOLVE = [
    (("--username", "jsmith"), 0, "p1"),
    (("--username", "JSMITH"), 1, "nobody"),
    (("--email", "JS@FORCE.example"), 0, "p1"),
    (("--ip", "10.0.0.5", "--at", "2026-03-02T15:59:59Z"), 0, "p1"),
    (("--ip", "10.0.0.5", "--at", "2026-03-02T16:30:00Z"), 1, "nobody"),  # conflict
    (("--ip", "::ffff:10.0.0.5", "--at", "2026-03-02T17:00:00Z"), 0, "p2"),
    (("--ip", "2001:DB8:0::5", "--at", "2026-03-03T09:00:00+01:00"), 0, "p1"),
    (("--ip", "2001:db8::5", "--at", "2026-03-03T07:59:59Z"), 1, "nobody"),
]


@pytest.mark.parametrize(("args", "code", "out"), RESOLVE)
def test_resolve(lbm: Lbm, feed: Path, args: tuple[str, ...], code: int, out: str) -> None:
    load_partly(lbm, feed)
    result = lbm("identity", "resolve", *args)
    assert (result.returncode, result.stdout.strip()) == (code, out), result.stderr


def test_resolve_json(lbm: Lbm, feed: Path) -> None:
    load_partly(lbm, feed)
    result = lbm(
        "identity",
        "resolve",
        "--ip",
        "10.0.0.5",
        "--at",
        "2026-03-02T09:00:00Z",
        "--json",
        check=True,
    )
    assert json.loads(result.stdout) == {
        "ip": "10.0.0.5",
        "at": "2026-03-02T09:00:00Z",
        "principal": "p1",
    }


RESOLVE_USAGE = [
    ((), "give exactly one of --ip, --email, --username"),
    (("--username", "a", "--email", "a@b"), "give exactly one of --ip, --email, --username"),
    (("--ip", "10.0.0.5"), "--ip needs --at ISO8601"),
    (("--ip", "10.0.0.500", "--at", "2026-03-02T09:00:00Z"), "--ip '10.0.0.500' is not an IP"),
    (("--ip", "10.0.0.5", "--at", "soon"), "--at: not an ISO 8601 date-time: 'soon'"),
]


@pytest.mark.parametrize(("args", "message"), RESOLVE_USAGE)
def test_resolve_usage_errors(lbm: Lbm, args: tuple[str, ...], message: str) -> None:
    result = lbm("identity", "resolve", *args)
    assert result.returncode == 2
    assert f"lbm: error: {message}" in result.stderr


def test_status_shows_the_current_load_and_its_problems(lbm: Lbm, feed: Path) -> None:
    assert "no identity feed has been imported" in lbm("identity", "status", check=True).stdout
    load_partly(lbm, feed)
    data = json.loads(lbm("identity", "status", "--json", check=True).stdout)
    assert (data["source"], data["loaded"], data["bad"], data["conflicts"]) == (str(feed), 8, 2, 1)
    assert data["problems"][0] == f"{feed}:10: valid_from 'tomorrow' is not an ISO 8601 date-time"


def test_housekeeping_reimports_the_configured_feed_when_it_changes(lbm: Lbm, feed: Path) -> None:
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace('feed = ""', f'feed = "{feed}"'))
    past = time.time() - 60
    os.utime(feed, (past, past))
    first = lbm("housekeeping", "run", "--once", check=True)
    events = [json.loads(line) for line in first.stdout.splitlines() if line.startswith('{"')]
    assert any(e.get("event") == "identity_feed_imported" for e in events)  # JSON log lines
    assert lbm("identity", "resolve", "--username", "amy").stdout.strip() == "p2"
    feed.write_text(FEED.replace("amy", "amelia"))
    os.utime(feed, (past + 30, past + 30))
    lbm("housekeeping", "run", "--once", check=True)
    assert lbm("identity", "resolve", "--username", "amy").returncode == 1
    assert lbm("identity", "resolve", "--username", "amelia").stdout.strip() == "p2"
    actions = [
        json.loads(x)["action"]
        for x in (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    assert actions.count("identity_import") == 2

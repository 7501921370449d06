"""`lbm report`: the counts in JSON match a scripted history; the HTML page is self-contained
(no external URL, no script, free text escaped) and renders non-blank in headless Chromium;
the report names no subject; a tampered audit chain is reported as failed; bad periods exit 2.

History (fake clock, period 2026-01-01 to 2026-04-01): STD-1 (criminal, HOPS) granted in
January, reviewed, renewed with a results update; STD-2 (staff discipline, HR) granted and
cancelled; URG-1 urgent, ratified in time; URG-2 urgent, never ratified. Searches, bundles,
exports, collateral removal, gaps, purges and refusals are appended to the real audit log as
the other commands would write them; one search falls after the period.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lbm_testing import DUTY, HOPS, HR, INV_RECIPIENT, Lbm, grant_argv

from store import investigators as inv_table
from store import signing
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import Clock
from store.paths import DataPaths

SUBJECTS = ("p55501", "p55502", "p55503", "p55504")
PERIOD = ("--from", "2026-01-01", "--to", "2026-04-01")
REASON_1 = "<b>case 1</b> lead"
REASON_2 = "pattern of access"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _cli(lbm: Lbm, *args: str, now: str) -> tuple[int, str]:
    """An edge case in process, same command line as `lbm`: the exit code and stdout, or
    stderr when it failed."""
    result = lbm.inproc(*args, env={"LBM_FAKE_NOW": now})
    return result.returncode, result.stdout if result.returncode == 0 else result.stderr


def _ok(lbm: Lbm, *args: str, now: str) -> None:
    code, out = _cli(lbm, *args, now=now)
    assert code == 0, (args, out)


def _audit(paths: DataPaths, when: str, action: Action, refs: tuple[str, ...] = (), **f: object):
    key = signing.load(paths)
    log = AuditLog(paths, key, Clock(fixed=_at(when), allow_fake=True), witness=False)
    log.append(action, "root", refs=refs, **f)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lbm, DataPaths]:
    lbm = Lbm(tmp_path_factory.mktemp("report") / "data")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    paths = DataPaths(lbm.data_dir)
    conn = store_sqlite.connect(paths.registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", "2025-01-01T00:00:00Z", login="root")
    conn.close()
    t = "2025-12-01T00:00:00Z"
    for p, name, role, rank in (HOPS, HR, DUTY):
        _ok(lbm, "officer", "add", p, "--name", name, "--role", role, "--rank", rank,
            "--from", "2000-01-01T00:00:00Z", now=t)  # fmt: skip
    _ok(lbm, *grant_argv("STD-1", SUBJECTS[0]), now="2026-01-10T09:00:00Z")
    staff = ("--case-type", "staff_discipline", "--purpose", "compliance")
    _ok(lbm, *grant_argv("STD-2", SUBJECTS[1], officer="p200", extra=staff),
        now="2026-01-20T09:00:00Z")  # fmt: skip
    _ok(lbm, *grant_argv("URG-1", SUBJECTS[2], command="urgent", officer="p300"),
        now="2026-02-01T09:00:00Z")  # fmt: skip
    _ok(lbm, "auth", "ratify", "URG-1", "--officer", "p100", now="2026-02-02T09:00:00Z")
    _ok(lbm, *grant_argv("URG-2", SUBJECTS[3], command="urgent", officer="p300"),
        now="2026-02-05T09:00:00Z")  # fmt: skip
    _ok(lbm, "auth", "review", "STD-1", "--officer", "p100", "--note", "ok",
        now="2026-02-10T09:00:00Z")  # fmt: skip
    _ok(lbm, "auth", "cancel", "STD-2", "--reason", "cleared", now="2026-03-01T09:00:00Z")
    _ok(lbm, "auth", "renew", "STD-1", "--officer", "p100", "--results", "two leads",
        now="2026-03-20T09:00:00Z")  # fmt: skip
    when = "2026-03-25T10:00:00Z"
    for reason in (REASON_1, REASON_1, REASON_2):
        _audit(paths, when, Action.SEARCH, ("STD-1",), reason=reason, query="q", rows=4)
    _audit(paths, when, Action.SEARCH, ("URG-1",), reason=REASON_2, query="q", rows=1)
    _audit(paths, when, Action.SEARCH_REFUSED, ("STD-1",), why="no ref")
    _audit(paths, when, Action.SEARCH_REFUSED, (), why="no reason")
    _audit(paths, when, Action.EXPORT_REFUSED, ("URG-2",), why="not assigned")
    _audit(paths, when, Action.BUNDLE, ("STD-1",), bundle_sha256="0" * 64)
    _audit(paths, when, Action.EXPORT, ("STD-1",), records=3)
    _audit(paths, when, Action.COLLATERAL_PROPOSE, ("STD-1",), record="STD-1/000001/2")
    _audit(paths, when, Action.COLLATERAL_APPROVE, ("STD-1",), segment="STD-1/000001")
    _audit(paths, when, Action.CAPTURE_GAP, ("STD-1",), error="disk full")
    _audit(paths, when, Action.PURGE, kind="metadata", stream="web", dates=["a", "b"], files=4)
    _audit(paths, when, Action.PURGE, ("OLD-9",), kind="archive", whole_archive=True)
    _audit(paths, "2026-04-02T10:00:00Z", Action.SEARCH, ("STD-1",), reason=REASON_2, rows=1)
    return lbm, paths


def test_json_counts_match_the_scripted_history(
    history: tuple[Lbm, DataPaths], tmp_path: Path
) -> None:
    lbm, paths = history
    page = tmp_path / "report.html"
    now = {"LBM_FAKE_NOW": "2026-04-15T09:00:00Z"}
    result = lbm("report", *PERIOD, "--json", "--html", str(page), env=now, check=True)
    data = json.loads(result.stdout)
    auths = data["authorisations"]
    assert auths["in_period"] == 4
    assert auths["by_case_type"] == {"criminal": 3, "staff_discipline": 1}
    # each purpose counts (STD-2 has two: --purpose repeats)
    assert auths["by_purpose"] == {"compliance": 1, "preventing_or_detecting_crime": 4}
    assert auths["by_officer_role"] == {
        "director_of_hr": 1, "duty_inspector": 2, "head_of_professional_standards": 1,
    }  # fmt: skip
    # at 2026-04-01: STD-1 renewed, URG-1 ratified (3 months from its start), URG-2 lapsed
    assert auths["by_state"] == {"active": 2, "cancelled": 1, "expired": 1}
    assert auths["granted"] == {"standard": 2, "urgent": 2}
    assert auths["granted_per_month"] == {
        "2026-01": {"standard": 2, "urgent": 0}, "2026-02": {"standard": 0, "urgent": 2},
    }  # fmt: skip
    assert auths["urgent"] == {
        "granted": 2, "ratified_in_time": 1, "awaiting_ratification": 0, "not_ratified": 1,
    }  # fmt: skip
    assert auths["renewals"] == {"count": 1, "with_results_update": 1}
    assert auths["cancellations"] == 1 and auths["reviews"]["done"] == 1
    assert data["searches"] == {
        "count": 4, "by_reason": {REASON_1: 2, REASON_2: 2}, "by_ref": {"STD-1": 3, "URG-1": 1},
    }  # fmt: skip
    assert data["refusals"] == {"export_refused": 1, "search_refused": 2}
    assert data["exports"] == {"export": 1, "bundle": 1}
    assert data["collateral"] == {"proposed": 1, "removed": 1}
    assert data["capture_gaps"]["capture_gap"] == 1
    assert data["purges"] == {"archives": 1, "metadata_partitions": 2}
    assert data["audit_chain"]["ok"] is True
    assert data["gateway"]["allowed_signers"].startswith('gw1 namespaces="lbm-evidence" ssh-')
    for text in (result.stdout, page.read_text()):
        assert not any(s in text for s in SUBJECTS)  # counts, never who
    entry = json.loads(paths.audit_log.read_text().splitlines()[-1])
    assert entry["action"] == "report" and entry["fields"]["formats"] == ["json", "html"]
    assert entry["fields"]["from"] == "2026-01-01T00:00:00Z"
    _check_page(page, tmp_path)


def _png_rows(png: bytes) -> list[bytes]:
    """The decoded scanlines of an 8-bit RGB(A) PNG (filter bytes kept: enough to tell
    whether the picture has more than one colour)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, channels = 8, b"", 0, 4
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, _, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    return [raw[i : i + stride] for i in range(0, len(raw), stride)]


def _check_page(page: Path, tmp_path: Path) -> None:
    html = page.read_text()
    # the gateway's public key (base64) may contain "//" by chance: it is not a reference
    refs = re.sub(r"ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+", "KEY", html)
    assert not re.search(r"(?i)https?:|//|<script|src=|href=|url\(|@import", refs)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "&lt;b&gt;case 1&lt;/b&gt;" in html and "<b>case 1" not in html
    assert html.count("<svg") >= 5
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        assert not os.environ.get("CI"), "CI must have chromium (.ci/run installs it)"
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    rows = _png_rows(shot.read_bytes())
    assert len(rows) == 1400
    colours = {bytes(r[i : i + 3]) for r in rows[::20] for i in range(1, len(r) - 3, 37)}
    assert len(colours) > 4, "the screenshot is blank"


def test_a_tampered_chain_is_reported_failed(
    history: tuple[Lbm, DataPaths], tmp_path: Path
) -> None:
    _, paths = history
    copy = Lbm(tmp_path / "copy")
    shutil.copytree(paths.root, copy.data_dir)
    log = copy.data_dir / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if REASON_2 in line)
    lines[index] = lines[index].replace(REASON_2, "pattern of acce55")
    log.write_text("".join(lines))
    code, out = _cli(copy, "report", *PERIOD, "--json", now="2026-04-15T09:00:00Z")
    assert code == 0, out
    chain = json.loads(out)["audit_chain"]
    assert chain["ok"] is False and chain["problem"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "2026-04-01", "--to", "2026-01-01"), "--to must be after --from"),
        (("--from", "yesterday", "--to", "2026-01-01"), "--from 'yesterday'"),
        (("--from", "2026-01-01T00:00:00", "--to", "2026-02-01"), "no time zone"),
        (("--from", "2026-01-01", "--to", "2026-02-01", "--html", "/nonexistent/x.html"),
         "does not exist"),
    ],
)  # fmt: skip
def test_bad_periods_and_paths_exit_2(
    history: tuple[Lbm, DataPaths], args: tuple[str, ...], message: str
) -> None:
    lbm, paths = history
    before = paths.audit_log.read_bytes()
    code, out = _cli(lbm, "report", *args, now="2026-04-15T09:00:00Z")
    assert code == 2 and message in out
    assert paths.audit_log.read_bytes() == before  # nothing reported, nothing audited

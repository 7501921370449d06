"""`lbm auth ...` through real subprocesses on an initialised data directory, with the fake
clock (LBM_FAKE_NOW) moving time: outputs, refusals (exit 1, one line), usage errors (exit 2),
and the audit trail they leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import Lbm, Result, register_officers

from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths

T0 = "2026-03-10T09:30:00Z"
INV1 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
INV2 = "age1v7evfx2ue6prgjwety0cz77w6mcnh5pdgc3xpvhskr5mqd477yuqdgsdp5"
HOPS = ["--officer", "p100"]  # registered by the runner (lbm_testing.OFFICERS)


@pytest.fixture
def auth(lbm: Lbm) -> Lbm:
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    inv_table.add(conn, "inv1", INV1, "p901", "2026-01-01T00:00:00Z")
    inv_table.add(conn, "inv2", INV2, "p902", "2026-01-01T00:00:00Z")
    conn.close()
    # the subject is an officer too, so self-authorisation is tested on a registered officer
    lbm("officer", "add", "p12345", "--name", "Sue Bject", "--role", "acu_inspector",
        "--rank", "inspector", "--from", "2000-01-01T00:00:00Z", check=True)  # fmt: skip
    return lbm


def at(when: str) -> dict[str, str]:
    return {"LBM_FAKE_NOW": when}


def grant(
    lbm: Lbm,
    *extra: str,
    ref: str = "CA1-2026-0042",
    when: str = T0,
    command: str = "grant",
    officer: list[str] | None = None,
) -> Result:
    args = [
        "auth",
        command,
        "--ref",
        ref,
        "--subject",
        "p12345",
        "--case-type",
        "criminal",
        "--purpose",
        "preventing_or_detecting_crime",
        "--purpose",
        "establishing_facts",
        "--channel",
        "web,email",
        *(HOPS if officer is None else officer),
        "--necessity",
        "needed to establish facts",
        "--proportionality",
        "least intrusive",
        "--collateral",
        "family mail excluded",
        "--ripa-considered",
        "yes",
        "--investigator",
        "inv1",
        *extra,
    ]
    return lbm(*args, env=at(when))


def refused(result: Result, code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [
        x for x in result.stderr.strip().splitlines() if not x.startswith("lbm: warning: fake")
    ]
    assert len(lines) == 1 and lines[0].startswith("lbm: error: "), result.stderr
    assert text in lines[0], lines[0]


def as_json(result: Result) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def audit_actions(lbm: Lbm) -> list[dict[str, Any]]:
    log = lbm.data_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_grant_show_history_json(auth: Lbm) -> None:
    data = as_json(grant(auth, "--retention-days", "730", "--open-do-not-decrypt", "--json"))
    assert data["open_do_not_decrypt"] is True
    assert data["ref"] == "CA1-2026-0042" and data["subject"] == "p12345"
    assert data["start"] == T0 and data["expiry"] == "2026-06-10T09:30:00Z"
    assert data["purposes"] == ["preventing_or_detecting_crime", "establishing_facts"]
    assert data["channels"] == ["web", "email"] and data["state"] == "active"
    assert data["retention_days"] == 730 and data["public_key"].startswith("age1")
    shown = as_json(auth("auth", "show", "CA1-2026-0042", "--json", env=at(T0)))
    assert shown["necessity"] == "needed to establish facts"
    assert shown["officer"]["role"] == "head_of_professional_standards"
    text = auth("auth", "show", "CA1-2026-0042", env=at(T0))
    assert "necessity: needed to establish facts" in text.stdout
    history = as_json(auth("auth", "history", "CA1-2026-0042", "--json"))
    assert [e["kind"] for e in history] == ["grant"]
    assert auth("audit", "verify").returncode == 0
    assert audit_actions(auth)[-1]["action"] == "auth_grant"


def test_grant_from_file_with_option_override(auth: Lbm, tmp_path: Path) -> None:
    register_officers(auth, "p200")  # named in the file, not on the command line
    app = tmp_path / "app.toml"
    app.write_text(
        'ref = "PSD-2026-7"\nsubject = "p222"\ncase-type = "staff_discipline"\n'
        'purposes = ["compliance", "standards"]\nchannels = ["email"]\n'
        'officer = "p200"\nnecessity = "n"\nproportionality = "p"\ncollateral = "c"\n'
        'ripa_considered = false\nripa_note = "overt HR matter"\ninvestigators = ["inv1"]\n'
        "start = 2026-03-11T00:00:00Z\n"
    )
    data = as_json(
        auth("auth", "grant", "--from-file", str(app), "--channel", "web", "--json", env=at(T0))
    )
    assert data["ref"] == "PSD-2026-7" and data["case_type"] == "staff_discipline"
    assert data["channels"] == ["web"]  # the option overrides the file
    assert data["start"] == "2026-03-11T00:00:00Z" and data["state"] == "pending"
    assert data["expiry"] == "2026-06-11T00:00:00Z"
    app.write_text(app.read_text() + 'officer_role = "head_of_professional_standards"\n')
    refused(
        auth("auth", "grant", "--from-file", str(app), env=at(T0)),
        2,
        "officer_role: comes from the officer register",
    )
    app.write_text('ref = "X"\ncolour = "red"\n')
    refused(auth("auth", "grant", "--from-file", str(app)), 2, f"{app}: colour: unknown field")
    app.write_text('ref = "X\n')
    refused(auth("auth", "grant", "--from-file", str(app)), 2, "TOML syntax error")


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (
            ["--officer", "p200"],
            1,
            "the officer register has p200 as director_of_hr (staff): officer role "
            "'director_of_hr' cannot authorise a criminal case; allowed roles: "
            "head_of_professional_standards or acu_inspector",
        ),
        (["--officer", "p999"], 1, "officer p999 is not in the officer register"),
        (["--officer", "p12345"], 1, "an officer cannot authorise monitoring of themselves"),
        (["--start", "2026-03-10T09:00:00Z"], 1, "start 2026-03-10T09:00:00Z is in the past"),
        (["--purpose", "fishing"], 2, "purpose 'fishing': must be one of"),
        (["--channel", "fax"], 2, "channel 'fax': must be one of web, email, packets"),
        (["--ref", "../../etc"], 2, "reference '../../etc'"),
        (["--ripa-considered", "perhaps"], 2, "RIPA considered 'perhaps': must be yes or no"),
        (["--necessity", " "], 1, "the necessity statement must not be empty"),
        (["--retention-days", "0"], 2, "retention days 0: must be greater than 0"),
        (["--investigator", "ghost"], 1, "investigator 'ghost' is not registered"),
    ],
)
def test_grant_refusals(auth: Lbm, change: list[str], code: int, message: str) -> None:
    officer = list(HOPS)
    extra: list[str] = []
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in officer:
            officer[officer.index(flag) + 1] = value
        else:
            extra += [flag, value]
    result = grant(auth, *extra, officer=officer)
    refused(result, code, message)
    assert as_json(auth("auth", "list", "--all", "--json")) == []
    if code == 1:  # a rule refused it: audited
        entry = audit_actions(auth)[-1]
        assert entry["action"] == "auth_refused" and message in entry["fields"]["reason"]


def test_missing_option_and_uninitialised_data_dir_are_usage_errors(
    auth: Lbm, tmp_path: Path
) -> None:
    result = auth("auth", "grant", "--ref", "R1", env=at(T0))
    refused(result, 2, "missing required field(s): --subject, --case-type")
    result = Lbm(tmp_path / "nowhere")("auth", "list")
    refused(result, 2, "not an initialised data directory")


def test_duplicate_reference_refused(auth: Lbm) -> None:
    assert grant(auth).returncode == 0
    refused(grant(auth, ref="ca1-2026-0042"), 1, "reference ca1-2026-0042 exists already")


def test_urgent_ratify_in_time_and_late(auth: Lbm) -> None:
    inspector = ["--officer", "p300"]  # duty_inspector, inspector
    sergeant = ["--officer", "p310"]  # custody_sergeant, sergeant
    refused(
        grant(auth, command="urgent", officer=sergeant),
        1,
        "urgent authorisation needs an officer of rank inspector or above",
    )
    data = as_json(grant(auth, "--json", command="urgent", officer=inspector))
    assert data["urgent"] and data["expiry"] == "2026-03-13T09:30:00Z"
    listed = as_json(auth("auth", "list", "--json", env=at("2026-03-11T00:00:00Z")))
    assert listed[0]["flags"] == ["expiring_soon", "awaiting_ratification"]
    refused(
        grant(auth, ref="U2", command="urgent", officer=inspector),
        1,
        "CA1-2026-0042",
    )  # urgent grants for one subject do not chain
    assert as_json(
        grant(auth, "--subject", "p222", "--json", ref="U2", command="urgent", officer=inspector)
    )
    # 71 h 59 m: in time, by an officer whose role fits; 72 h 01 m: too late
    refused(
        auth(
            "auth", "ratify", "CA1-2026-0042", "--officer", "p200", env=at("2026-03-13T09:29:00Z")
        ),
        1,
        "allowed roles",
    )
    # the officer who granted it cannot ratify it, whatever their role
    assert auth("officer", "add", "p300", "--name", "Ian Duty", "--role", "acu_inspector",
                "--rank", "inspector", env=at("2026-03-11T00:00:00Z")).returncode == 0  # fmt: skip
    refused(
        auth("auth", "ratify", "CA1-2026-0042", *inspector, env=at("2026-03-13T09:29:00Z")),
        1,
        "",
    )
    ratified = as_json(
        auth("auth", "ratify", "CA1-2026-0042", *HOPS, "--json", env=at("2026-03-13T09:29:00Z"))
    )
    assert ratified["expiry"] == "2026-06-10T09:30:00Z" and ratified["state"] == "active"
    refused(
        auth("auth", "ratify", "U2", *HOPS, env=at("2026-03-13T09:31:00Z")),
        1,
        "U2: ratification at 2026-03-13T09:31:00Z is too late",
    )
    listed = as_json(auth("auth", "list", "--all", "--json", env=at("2026-03-13T09:31:00Z")))
    assert {d["ref"]: d["state"] for d in listed} == {"CA1-2026-0042": "active", "U2": "expired"}


def test_review_renew_cancel(auth: Lbm) -> None:
    grant(auth)
    month = "2026-04-10T09:30:00Z"
    assert as_json(auth("auth", "list", "--json", env=at(month)))[0]["flags"] == ["review_due"]
    assert "review_due" in auth("auth", "list", env=at(month)).stdout
    reviewed = as_json(
        auth(
            "auth",
            "review",
            "CA1-2026-0042",
            *HOPS,
            "--note",
            "still needed",
            "--json",
            env=at(month),
        )
    )
    assert reviewed["flags"] == [] and reviewed["next_review"] == "2026-05-10T09:30:00Z"
    result = auth("auth", "renew", "CA1-2026-0042", *HOPS, env=at(month))
    assert result.returncode == 2 and "--results" in result.stderr
    window = "2026-06-01T00:00:00Z"
    refused(
        auth("auth", "renew", "CA1-2026-0042", *HOPS, "--results", "", env=at(window)),
        1,
        "the results update must not be empty",
    )
    renewed = as_json(
        auth(
            "auth",
            "renew",
            "CA1-2026-0042",
            *HOPS,
            "--results",
            "two suspects identified",
            "--json",
            env=at("2026-06-01T00:00:00Z"),
        )
    )
    assert renewed["expiry"] == "2026-09-10T09:30:00Z" and renewed["renewals"] == 1
    cancelled = as_json(
        auth(
            "auth",
            "cancel",
            "CA1-2026-0042",
            "--reason",
            "suspect cleared",
            "--json",
            env=at("2026-06-02T00:00:00Z"),
        )
    )
    assert cancelled["state"] == "cancelled"
    assert cancelled["cancelled_at"] == "2026-06-02T00:00:00Z"
    refused(
        auth(
            "auth", "cancel", "CA1-2026-0042", "--reason", "again", env=at("2026-06-03T00:00:00Z")
        ),
        1,
        "cancelled again",
    )
    assert as_json(auth("auth", "list", "--json", env=at("2026-06-03T00:00:00Z"))) == []
    kinds = [e["kind"] for e in as_json(auth("auth", "history", "CA1-2026-0042", "--json"))]
    assert kinds == ["grant", "review", "renew", "cancel"]
    actions = [e["action"] for e in audit_actions(auth)]
    for action in ("auth_grant", "auth_review", "auth_renew", "auth_cancel", "auth_refused"):
        assert action in actions
    assert auth("audit", "verify").returncode == 0


def test_assign_marks_rewrap_due(auth: Lbm) -> None:
    grant(auth)
    data = as_json(auth("auth", "assign", "CA1-2026-0042", "inv2", "--json", env=at(T0)))
    assert data["assignees"] == ["inv1", "inv2"] and data["rewrap_due"]
    assert "rewrap_due" in auth("auth", "list", env=at(T0)).stdout
    refused(auth("auth", "assign", "CA1-2026-0042", "inv2"), 1, "already assigned")
    refused(auth("auth", "assign", "CA1-2026-0042", "ghost"), 1, "not registered")
    refused(auth("auth", "assign", "NOPE", "inv2"), 1, "no authorisation with reference 'NOPE'")


def test_snapshot_source_helper_reads_do_not_decrypt_from_config(auth: Lbm) -> None:
    from appliance.cli.app import App
    from appliance.cli.auth_cmd import snapshot_source

    source = snapshot_source(App(str(auth.data_dir), None))
    assert source.current().is_do_not_decrypt("www.nhs.uk")
    source.stop()

"""`lbm officer` and the officer register's effect on `lbm auth`, through the real CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lbm_testing import INV_RECIPIENT, Lbm, Result, grant_argv

from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths

T0 = "2026-03-10T09:30:00Z"
AT = {"LBM_FAKE_NOW": T0}


def refused(result: Result, code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def audit(lbm: Lbm) -> list[dict[str, Any]]:
    log = lbm.data_dir / "audit" / "audit.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()]


@pytest.fixture
def reg(lbm: Lbm) -> Lbm:
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    inv_table.add(conn, "inv1", INV_RECIPIENT, "p901", "2026-01-01T00:00:00Z")
    conn.close()
    lbm.auto_officers = False
    return lbm


def add(lbm: Lbm, principal: str, *extra: str, role: str = "acu_inspector") -> Result:
    return lbm("officer", "add", principal, "--name", "Ann Acu", "--role", role,
               "--rank", "inspector", *extra, env=AT)  # fmt: skip


def test_add_list_show_end_audited_and_names_escaped(reg: Lbm) -> None:
    hostile = "Ann\n p999  Forged Line\x1b[2J"
    result = reg("officer", "add", "p110", "--name", hostile, "--role", "acu_inspector",
                 "--rank", "inspector", "--from", "2026-01-01T00:00:00Z", env=AT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = reg("officer", "list", env=AT)
    assert listed.stdout.count("\n") == 2 and "\\n p999" in listed.stdout  # header + 1
    assert "\x1b" not in listed.stdout
    data = json.loads(reg("officer", "show", "p110", "--json").stdout)
    assert data[0]["name"] == hostile and data[0]["valid_to"] is None
    ended = reg("officer", "end", "p110", "--at", "2026-04-01T00:00:00Z", "--json", env=AT)
    assert json.loads(ended.stdout)["valid_to"] == "2026-04-01T00:00:00Z"
    assert reg("officer", "list", env={"LBM_FAKE_NOW": "2026-05-01T00:00:00Z"}).stdout.startswith(
        "no officers"
    )
    actions = [e["action"] for e in audit(reg)]
    assert actions[-2:] == ["officer_add", "officer_end"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--rank", "constable", "--role", "head_of_professional_standards"], 1,
         "rank constable cannot hold it"),
        (["--from", "2026-03-10T10:00"], 2, "no time zone"),
        (["--ssh-key", "ssh-ed25519 AAAAnotakey"], 2, "SSH key"),
        (["--ssh-key", "/nonexistent/key.pub"], 2, "neither a public key line nor a file"),
    ],
)  # fmt: skip
def test_bad_registrations_refused(reg: Lbm, args: list[str], code: int, message: str) -> None:
    refused(add(reg, "p110", *args), code, message)
    assert json.loads(reg("officer", "list", "--all", "--json").stdout) == []
    if code == 1:
        assert audit(reg)[-1]["action"] == "auth_refused"


def test_unregistered_or_ended_officer_cannot_act(reg: Lbm) -> None:
    refused(reg(*grant_argv("R1", officer="p100"), env=AT), 1,
            "officer p100 is not in the officer register")  # fmt: skip
    reg("officer", "add", "p100", "--name", "Pat Hops", "--role", "head_of_professional_standards",
        "--rank", "superintendent", "--from", "2026-01-01T00:00:00Z",
        "--to", "2026-03-01T00:00:00Z", check=True)  # fmt: skip
    refused(
        reg(*grant_argv("R1", officer="p100"), env=AT),
        1,
        "p100 holds no registered role at 2026-03-10T09:30:00Z; the register has "
        "head_of_professional_standards (superintendent) from 2026-01-01T00:00:00Z until "
        "2026-03-01T00:00:00Z",
    )
    assert reg(*grant_argv("R1", officer="p100"), env={"LBM_FAKE_NOW": "2026-02-01T00:00:00Z"})


def test_cancellation_open_to_audit_officer_and_registered_officers_never_the_subject(
    reg: Lbm,
) -> None:
    add(reg, "p110", "--from", "2026-01-01T00:00:00Z")
    add(reg, "p12345", "--from", "2026-01-01T00:00:00Z")  # the subject is an officer too
    for ref in ("R1", "R2"):
        assert reg(*grant_argv(ref, officer="p110"), env=AT).returncode == 0
    refused(
        reg("auth", "cancel", "R1", "--reason", "x", "--officer", "p12345", env=AT),
        1,
        "p12345 is the subject of R1 and cannot cancel it",
    )
    refused(reg("auth", "cancel", "R1", "--reason", "x", "--officer", "p404", env=AT), 1,
            "not in the officer register")  # fmt: skip
    by_officer = reg("auth", "cancel", "R1", "--reason", "done", "--officer", "p110", "--json",
                     env=AT)  # fmt: skip
    assert json.loads(by_officer.stdout)["state"] == "cancelled"
    by_login = reg("auth", "cancel", "R2", "--reason", "done", env=AT)  # the audit officer
    assert by_login.returncode == 0, by_login.stderr
    history = json.loads(reg("auth", "history", "R1", "--json").stdout)
    assert history[-1]["officer"]["principal"] == "p110"


def test_auth_list_aligned_columns(reg: Lbm) -> None:
    add(reg, "p110", "--from", "2026-01-01T00:00:00Z")
    reg(*grant_argv("CA1-2026-0042", channel="web,email", officer="p110"), env=AT, check=True)
    reg.grant("R2", "p2", channel="packets", officer="p110", when=T0)
    lines = reg("auth", "list", env=AT).stdout.splitlines()
    assert lines[0].split() == ["REF", "SUBJECT", "STATE", "CASE", "TYPE", "CHANNELS", "OFFICER",
                                "INVESTIGATORS", "START", "EXPIRY", "FLAGS"]  # fmt: skip
    assert lines[1].split()[:7] == ["CA1-2026-0042", "p12345", "active", "criminal",
                                    "web,email", "p110", "inv1"]  # fmt: skip
    for column in ("SUBJECT", "CHANNELS", "OFFICER", "EXPIRY"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)


def test_a_login_user_mapped_to_the_subject_cannot_cancel(reg: Lbm) -> None:
    """`lbm keys investigator add ... --login USER` says which principal a login user is. The
    subject, registered as an investigator of another case under their own login, runs
    `lbm auth cancel` without `--officer`: refused, since the login user is the subject."""
    from store.actor import current_actor

    me = current_actor()
    add(reg, "p110", "--from", "2026-01-01T00:00:00Z")
    assert reg(*grant_argv("R1", officer="p110"), env=AT).returncode == 0
    added = reg("keys", "investigator", "add", "me", INV_RECIPIENT, "--principal", "p12345",
                "--login", me, env=AT)  # fmt: skip
    assert added.returncode == 0, added.stderr
    refused(reg("auth", "cancel", "R1", "--reason", "stop", env=AT), 1,
            "p12345 is the subject of R1 and cannot cancel it")  # fmt: skip
    # one login user acts as one investigator; a login is a login name
    twice = reg("keys", "investigator", "add", "again", INV_RECIPIENT, "--principal", "p7",
                "--login", me, env=AT)  # fmt: skip
    refused(twice, 1, f"login {me} is mapped to investigator me already")
    bad = reg("keys", "investigator", "add", "x", INV_RECIPIENT, "--principal", "p7",
              "--login", "Root\n", env=AT)  # fmt: skip
    refused(bad, 1, "not a login user name")
    assert reg("keys", "investigator", "remove", "me", env=AT).returncode == 0
    assert reg("auth", "cancel", "R1", "--reason", "done", env=AT).returncode == 0

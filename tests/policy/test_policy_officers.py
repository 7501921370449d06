"""The officer register on a real registry (SQLite, signed audit log, key store): officers are
facts with validity windows, acts read them at their instant, and a failed COMMIT leaves no key."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.policy import InvalidInput, RegistryError, RuleViolation
from appliance.policy.model import Application, CaseType, Channel, Officer, Purpose, Rank
from appliance.policy.officer_register import OfficerRegister, key_fingerprint
from appliance.policy.registry import Registry, load_all
from store import investigators as inv_table
from store import signing
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.clock import Clock
from store.paths import DataPaths

T0 = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
YEAR = timedelta(days=365)


@dataclass
class Env:
    paths: DataPaths
    reg: Registry
    officers: OfficerRegister
    now: list[datetime]

    def at(self, when: datetime) -> None:
        self.now[0] = when

    def audit(self) -> list[dict]:
        return [json.loads(x) for x in self.paths.audit_log.read_text().splitlines()]


def age_key(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    out = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True)
    return out.stdout.decode().strip()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    paths = DataPaths(tmp_path / "data")
    key = signing.create(paths, "gw1")
    now = [T0]
    clock = Clock(source=lambda: now[0])
    conn = store_sqlite.connect(paths.registry)
    reg = Registry(
        conn, clock=clock, actor="tester", audit=AuditLog(paths, key, clock, witness=False),
        paths=paths,
    )  # fmt: skip
    recipient = age_key(tmp_path / "inv.key")
    inv_table.add(conn, "inv1", recipient, "p901", "2026-01-01T00:00:00Z")
    inv_table.add(conn, "subj", recipient, "p12345", "2026-01-01T00:00:00Z")
    officers = OfficerRegister(reg)
    officers.add("p100", name="Pat Hops", role="head_of_professional_standards",
                 rank="superintendent", valid_from=T0 - YEAR)  # fmt: skip
    officers.add("p300", name="Ian Duty", role="duty_inspector", rank="inspector",
                 valid_from=T0 - YEAR)  # fmt: skip
    yield Env(paths, reg, officers, now)
    reg.close()


def application(ref: str = "CA1-1", officer: Officer | None = None, **over: object) -> Application:
    base: dict[str, object] = dict(
        ref=ref, subject="p12345", case_type=CaseType.CRIMINAL,
        purposes=(Purpose.PREVENTING_OR_DETECTING_CRIME,), channels=(Channel.WEB,),
        officer=officer or Officer("p100", "?", "?", Rank.STAFF), necessity="n",
        proportionality="p", collateral="c", ripa_considered=True, ripa_note="", start=T0,
        investigators=("inv1",),
    )  # fmt: skip
    base.update(over)
    return Application(**base)  # type: ignore[arg-type]


def test_the_register_not_the_caller_says_who_the_officer_is(env: Env) -> None:
    forged = Officer("p100", "Forged Name", "acu_inspector", Rank.CHIEF_CONSTABLE)
    auth = env.reg.grant(application(officer=forged))
    assert auth.application.officer == Officer(
        "p100", "Pat Hops", "head_of_professional_standards", Rank.SUPERINTENDENT
    )
    assert env.audit()[-1]["fields"]["officer"]["name"] == "Pat Hops"
    # a duty inspector claiming to be Head of Professional Standards is still a duty inspector
    claim = Officer("p300", "Ian Duty", "head_of_professional_standards", Rank.CHIEF_CONSTABLE)
    with pytest.raises(RuleViolation, match="register has p300 as duty_inspector"):
        env.reg.grant(application("CA1-2", officer=claim))
    assert env.audit()[-1]["action"] == Action.AUTH_REFUSED.value


@pytest.mark.parametrize(
    ("principal", "message"),
    [
        ("p999", "officer p999 is not in the officer register"),
        ("p100\n", "a principal id must match"),
    ],
)
def test_unregistered_officer_refused(env: Env, principal: str, message: str) -> None:
    with pytest.raises((RuleViolation, InvalidInput), match=message):
        env.reg.grant(application(officer=Officer(principal, "x", "x", Rank.STAFF)))
    assert load_all(env.reg.conn) == ()
    assert not (env.paths.keystore / "CA1-1").exists()


def test_validity_window_new_period_and_end(env: Env) -> None:
    later = T0 + timedelta(days=10)
    env.officers.add("p100", name="Pat Hops", role="director_of_hr", rank="staff",
                     valid_from=later)  # fmt: skip
    periods = env.reg.officer_periods("p100")["p100"]
    assert [(p.role, p.valid_to) for p in periods] == [
        ("head_of_professional_standards", later),
        ("director_of_hr", None),
    ]
    assert env.reg.officer_at("p100", later - timedelta(seconds=1)).role.startswith("head_of")
    env.reg.grant(application())  # at T0: still Head of Professional Standards
    env.at(later + timedelta(days=1))
    with pytest.raises(RuleViolation, match="register has p100 as director_of_hr"):
        env.reg.grant(application("CA1-2", start=env.now[0]))
    # the grant made at T0 keeps the officer as registered then
    assert env.reg.get("CA1-1").application.officer.role == "head_of_professional_standards"
    ended = env.officers.end("p300", T0 + timedelta(days=12))
    assert ended.valid_to == T0 + timedelta(days=12)
    env.at(T0 + timedelta(days=13))
    with pytest.raises(RuleViolation, match=r"p300 holds no registered role at .*until 2026-03-22"):
        env.reg.grant(application("U-1", urgent=True, start=env.now[0],
                                  officer=Officer("p300", "", "", Rank.STAFF)))  # fmt: skip
    actions = [e["action"] for e in env.audit()]
    assert actions.count("officer_add") == 3 and "officer_end" in actions


@pytest.mark.parametrize(
    ("role", "rank", "message"),
    [
        ("head_of_professional_standards", "constable", "cannot hold it"),
        ("acu_inspector", "staff", "cannot hold it"),
        ("head_of_professional_standards", "general", "rank 'general'"),
        ("Head of PSD", "superintendent", "role 'Head of PSD'"),
    ],
)
def test_impossible_role_and_rank_refused_at_registration(
    env: Env, role: str, rank: str, message: str
) -> None:
    with pytest.raises((RuleViolation, InvalidInput), match=message):
        env.officers.add("p500", name="Con Stable", role=role, rank=rank)
    assert "p500" not in env.reg.officer_periods()


def test_register_is_append_only_and_refuses_overlapping_or_backwards_periods(env: Env) -> None:
    for sql in ("UPDATE officer_register SET role = 'x'", "DELETE FROM officer_register"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            env.reg.conn.execute(sql)
    with pytest.raises(RuleViolation, match="must start after the current one"):
        env.officers.add("p100", name="P", role="acu_inspector", rank="inspector",
                         valid_from=T0 - 2 * YEAR)  # fmt: skip
    with pytest.raises(RuleViolation, match="is not after --from"):
        env.officers.add("p600", name="P", role="acu_inspector", rank="inspector",
                         valid_from=T0, valid_to=T0)  # fmt: skip
    with pytest.raises(RuleViolation, match="holds no registered role"):
        env.officers.end("p600")


def test_ssh_key_checked_and_fingerprinted_like_ssh_keygen(env: Env, tmp_path: Path) -> None:
    key = tmp_path / "officer_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pat@psd", "-f",
                    str(key)], check=True)  # fmt: skip
    line = (tmp_path / "officer_key.pub").read_text()
    period = env.officers.set_key("p100", line)
    assert period.ssh_key == " ".join(line.split()[:2])
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(key) + ".pub"], check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert key_fingerprint(period.ssh_key) == shown.split()[1]
    assert env.audit()[-1]["fields"]["ssh_key_fingerprint"] == shown.split()[1]
    for bad in ("ssh-ed25519 AAAA!!", "ssh-dss AAAAB3NzaC1kc3M=", "ssh-rsa " + line.split()[1]):
        with pytest.raises(InvalidInput, match="SSH key"):
            env.officers.set_key("p100", bad)


def test_investigator_who_is_the_subject_is_never_assigned(env: Env) -> None:
    with pytest.raises(RuleViolation, match="p12345 is the subject"):
        env.reg.grant(application(investigators=("inv1", "subj")))
    assert not (env.paths.keystore / "CA1-1").exists()
    env.reg.grant(application())
    with pytest.raises(RuleViolation, match="p12345 is the subject"):
        env.reg.assign("CA1-1", "subj")


def test_failed_commit_leaves_no_key_material_and_no_keystore_directory(env: Env) -> None:
    # A deferred foreign key is checked at COMMIT only: the trap makes the grant's COMMIT fail
    # for real, after the key pair was written.
    env.reg.conn.executescript(
        """
        CREATE TABLE trap_parent (id INTEGER PRIMARY KEY);
        CREATE TABLE trap (parent INTEGER REFERENCES trap_parent(id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TRIGGER trap_grant AFTER INSERT ON authorisations
        BEGIN INSERT INTO trap VALUES (42); END;
        """
    )
    with pytest.raises(RegistryError, match="could not record it"):
        env.reg.grant(application())
    assert not env.reg.conn.in_transaction
    assert load_all(env.reg.conn) == ()
    assert not (env.paths.keystore / "CA1-1").exists()
    refused = env.audit()[-1]
    assert refused["action"] == Action.AUTH_REFUSED.value
    assert "commit failed" in refused["fields"]["reason"]
    env.reg.conn.execute("DROP TRIGGER trap_grant")
    assert env.reg.grant(application()).ref == "CA1-1"  # a retry works
    assert (env.paths.keystore / "CA1-1" / "auth.age").exists()


def test_cancel_refused_to_a_login_user_mapped_to_the_subject(env: Env) -> None:
    """With the investigator register's login mapping (`--login`), the login user is compared
    with the subject: a subject cannot cancel their own monitoring, whatever they claim."""
    env.reg.grant(application())
    env.reg.conn.execute("UPDATE investigators SET login = 'tester' WHERE name = 'subj'")
    with pytest.raises(RuleViolation, match="p12345 is the subject of CA1-1 and cannot cancel"):
        env.reg.cancel("CA1-1", "stop watching me")
    with pytest.raises(RuleViolation, match="p12345 is the subject"):
        env.reg.cancel("CA1-1", "stop watching me", "p100")  # claiming an officer's name
    env.reg.conn.execute("UPDATE investigators SET login = 'tester' WHERE name = 'inv1'")
    env.reg.conn.execute("UPDATE investigators SET login = NULL WHERE name = 'subj'")
    assert env.reg.cancel("CA1-1", "no longer needed").cancelled_at == T0

"""The authorisation register on a real data directory: SQLite registry, signed audit log, key
store with real age keys (decrypted with the `age` CLI), and a movable clock."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.policy import RegistryError, RuleViolation
from appliance.policy.decide import decide
from appliance.policy.model import (
    Application,
    CaseType,
    Channel,
    EventKind,
    Officer,
    Purpose,
    Rank,
)
from appliance.policy.officer_register import OfficerRegister
from appliance.policy.registry import Registry, load_all
from appliance.policy.snapshot import Snapshot
from store import AuditError, signing
from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.audit import Action, AuditLog
from store.audit_verify import verify_log
from store.clock import Clock
from store.paths import DataPaths

T0 = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
HOPS = Officer("p100", "Pat Hops", "head_of_professional_standards", Rank.SUPERINTENDENT)
DUTY = Officer("p300", "Ian Duty", "duty_inspector", Rank.INSPECTOR)
NECESSITY = "necessity-statement-7f3a"


def age_key(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Env:
    paths: DataPaths
    reg: Registry
    now: list[datetime]
    keys: dict[str, Path]

    def at(self, when: datetime) -> None:
        self.now[0] = when

    def audit(self) -> list[dict]:
        lines = self.paths.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    paths = DataPaths(tmp_path / "data")
    key = signing.create(paths, "gw1")
    now = [T0]
    clock = Clock(source=lambda: now[0])
    keys = {name: tmp_path / f"{name}.key" for name in ("inv1", "inv2", "custodian")}
    recipients = {name: age_key(path) for name, path in keys.items()}
    conn = store_sqlite.connect(paths.registry)
    reg = Registry(
        conn,
        clock=clock,
        actor="tester",
        audit=AuditLog(paths, key, clock, witness=False),
        paths=paths,
        custodians=[recipients["custodian"]],
    )
    inv_table.add(conn, "inv1", recipients["inv1"], "p901", "2026-01-01T00:00:00Z")
    inv_table.add(conn, "inv2", recipients["inv2"], "p902", "2026-01-01T00:00:00Z")
    register = OfficerRegister(reg)
    for o in (HOPS, DUTY):
        register.add(
            o.principal,
            name=o.name,
            role=o.role,
            rank=o.rank.value,
            valid_from=T0 - timedelta(days=365),
        )
    yield Env(paths, reg, now, keys)
    reg.close()


def application(ref: str = "CA1-2026-0042", **over: object) -> Application:
    base: dict[str, object] = dict(
        ref=ref,
        subject="p12345",
        case_type=CaseType.CRIMINAL,
        purposes=(Purpose.PREVENTING_OR_DETECTING_CRIME,),
        channels=(Channel.WEB, Channel.EMAIL),
        officer=HOPS,
        necessity=NECESSITY,
        proportionality="least intrusive means",
        collateral="family excluded",
        ripa_considered=True,
        ripa_note="",
        start=T0,
        investigators=("inv1",),
    )
    base.update(over)
    return Application(**base)  # type: ignore[arg-type]


def unwrap(env: Env, who: str, ref: str) -> str:
    """Decrypt keystore/REF/auth.age with the age CLI and return the public key it holds."""
    wrapped = env.paths.keystore / ref / "auth.age"
    plain = subprocess.run(
        ["age", "-d", "-i", str(env.keys[who]), str(wrapped)], check=True, capture_output=True
    )
    ident = env.paths.root.parent / f"unwrapped-{who}.key"
    ident.write_bytes(plain.stdout)
    return subprocess.run(
        ["age-keygen", "-y", str(ident)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_grant_records_computes_expiry_and_wraps_key_to_investigators_and_custodians(
    env: Env,
) -> None:
    auth = env.reg.grant(application())
    assert auth.expiry == datetime(2026, 6, 10, 9, 30, tzinfo=UTC)
    assert [e.kind for e in auth.history] == [EventKind.GRANT]
    assert auth.public_key.startswith("age1")
    assert (env.paths.keystore / auth.ref / "auth.pub").read_text().strip() == auth.public_key
    # the assigned investigator and the custodian can open the wrapped key; inv2 cannot
    assert unwrap(env, "inv1", auth.ref) == auth.public_key
    assert unwrap(env, "custodian", auth.ref) == auth.public_key
    with pytest.raises(subprocess.CalledProcessError):
        unwrap(env, "inv2", auth.ref)
    # a fresh connection reads back the same authorisation
    conn = store_sqlite.connect(env.paths.registry, readonly=True)
    assert load_all(conn) == (auth,)
    conn.close()


def test_grant_is_audited_with_statement_hashes_not_text(env: Env) -> None:
    env.reg.grant(application())
    entries = env.audit()
    grant = entries[-1]
    assert grant["action"] == Action.AUTH_GRANT.value and grant["refs"] == ["CA1-2026-0042"]
    assert grant["actor"] == "tester" and grant["fields"]["subject"] == "p12345"
    assert len(grant["fields"]["statements_sha256"]["necessity"]) == 64
    assert NECESSITY not in env.paths.audit_log.read_text()
    keys = signing.load_public_keys(env.paths)
    assert verify_log(env.paths, keys).ok


def test_duplicate_reference_refused_case_insensitively_and_audited(env: Env) -> None:
    env.reg.grant(application())
    with pytest.raises(RuleViolation, match="exists already"):
        env.reg.grant(application("ca1-2026-0042"))
    refused = env.audit()[-1]
    assert refused["action"] == Action.AUTH_REFUSED.value
    assert (
        refused["fields"]["request"] == "grant" and "exists already" in refused["fields"]["reason"]
    )
    assert not (env.paths.keystore / "ca1-2026-0042").exists()
    assert len(load_all(env.reg.conn)) == 1


def test_unregistered_or_removed_investigator_refused_and_nothing_written(env: Env) -> None:
    with pytest.raises(RuleViolation, match="investigator 'ghost' is not registered"):
        env.reg.grant(application(investigators=("ghost",)))
    inv_table.remove(env.reg.conn, "inv2", "2026-02-01T00:00:00Z")
    with pytest.raises(RuleViolation, match="investigator 'inv2' is not registered"):
        env.reg.grant(application(investigators=("inv1", "inv2")))
    assert load_all(env.reg.conn) == ()
    assert not (env.paths.keystore / "CA1-2026-0042").exists()


def test_history_and_authorisations_cannot_be_rewritten(env: Env) -> None:
    env.reg.grant(application())
    env.at(T0 + timedelta(days=1))
    env.reg.cancel("CA1-2026-0042", "no longer justified")
    conn = env.reg.conn
    for sql in (
        "UPDATE auth_history SET at = '2030-01-01T00:00:00Z'",
        "DELETE FROM auth_history WHERE kind = 'cancel'",
        "UPDATE authorisations SET subject = 'p999'",
        "DELETE FROM authorisations",
    ):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    assert env.reg.get("CA1-2026-0042").cancelled_at == T0 + timedelta(days=1)


def test_failed_audit_rolls_back_the_grant_and_its_key(env: Env) -> None:
    clock = env.reg.clock
    broken = Registry(
        env.reg.conn,
        clock=clock,
        actor="tester",
        audit=AuditLog(env.paths, None, clock),
        paths=env.paths,
    )
    with pytest.raises(AuditError):
        broken.grant(application())
    assert load_all(env.reg.conn) == ()
    assert not (env.paths.keystore / "CA1-2026-0042" / "auth.age").exists()
    assert env.reg.grant(application()).ref == "CA1-2026-0042"  # a retry works


def test_urgent_ratified_in_time_lasts_three_months_from_original_start(env: Env) -> None:
    env.reg.grant(application(urgent=True, officer=DUTY))
    env.at(T0 + timedelta(hours=71, minutes=59))
    auth = env.reg.ratify("CA1-2026-0042", "p100", "ratified by HoPS")
    assert auth.expiry == datetime(2026, 6, 10, 9, 30, tzinfo=UTC)
    assert [e.kind for e in auth.history] == [EventKind.URGENT, EventKind.RATIFY]
    assert env.audit()[-1]["action"] == Action.AUTH_RATIFY.value


def test_late_ratification_refused_and_urgent_lapses(env: Env) -> None:
    env.reg.grant(application(urgent=True, officer=DUTY))
    env.at(T0 + timedelta(hours=72, minutes=1))
    with pytest.raises(RuleViolation, match="too late"):
        env.reg.ratify("CA1-2026-0042", "p100")
    auth = env.reg.get("CA1-2026-0042")
    assert auth.ratified_at is None and auth.state(env.now[0]) == "expired"
    assert env.audit()[-1]["fields"]["request"] == "ratify"
    snap = Snapshot.build(load_all(env.reg.conn))
    assert decide(snap, "p12345", "web", T0 + timedelta(hours=71)).full
    assert not decide(snap, "p12345", "web", T0 + timedelta(hours=72)).full


def test_renewal_and_review(env: Env) -> None:
    env.reg.grant(application())
    env.at(T0 + timedelta(days=31))
    assert [x.flags for x in env.reg.list()] == [("review_due",)]
    env.reg.review("CA1-2026-0042", "p100", "still necessary")
    assert [x.flags for x in env.reg.list()] == [()]
    env.at(datetime(2026, 6, 5, tzinfo=UTC))
    assert "expiring_soon" in env.reg.list()[0].flags
    with pytest.raises(RuleViolation, match="results update must not be empty"):
        env.reg.renew("CA1-2026-0042", "p100", "")
    auth = env.reg.renew("CA1-2026-0042", "p100", "two suspects identified")
    assert auth.expiry == datetime(2026, 9, 10, 9, 30, tzinfo=UTC)
    assert auth.history[-1].text == "two suspects identified"
    env.at(datetime(2026, 9, 10, 9, 30, tzinfo=UTC))
    with pytest.raises(RuleViolation, match="only before expiry"):
        env.reg.renew("CA1-2026-0042", "p100", "late")


def test_cancellation_is_immediate_and_past_decisions_stand(env: Env) -> None:
    env.reg.grant(application())
    cancel_at = T0 + timedelta(days=5, seconds=7)
    env.at(cancel_at)
    with pytest.raises(RuleViolation, match="reason must not be empty"):
        env.reg.cancel("CA1-2026-0042", "  ")
    auth = env.reg.cancel("CA1-2026-0042", "suspect cleared", "p100")
    assert auth.cancelled_at == cancel_at and auth.cancel_reason == "suspect cleared"
    snap = Snapshot.build(load_all(env.reg.conn))
    assert decide(snap, "p12345", "email", cancel_at - timedelta(seconds=1)).full
    assert not decide(snap, "p12345", "email", cancel_at).full
    with pytest.raises(RuleViolation, match="cancelled again"):
        env.reg.cancel("CA1-2026-0042", "twice")
    entry = env.audit()[-2]
    assert entry["action"] == Action.AUTH_CANCEL.value and "suspect cleared" not in json.dumps(
        entry
    )


def test_assignment_marks_rewrap_due_until_rewrapped(env: Env) -> None:
    auth = env.reg.grant(application())
    assert not env.reg.rewrap_due(auth)
    auth = env.reg.assign("CA1-2026-0042", "inv2")
    assert env.reg.current_assignees(auth) == ("inv1", "inv2")
    assert env.reg.rewrap_due(auth) and env.reg.list()[0].rewrap_due
    assert env.audit()[-1]["fields"] == {"investigator": "inv2", "rewrap_due": True}
    with pytest.raises(RuleViolation, match="already assigned"):
        env.reg.assign("CA1-2026-0042", "inv2")
    with pytest.raises(RuleViolation, match="not registered"):
        env.reg.assign("CA1-2026-0042", "ghost")
    auth = env.reg.record_rewrap("CA1-2026-0042", ["inv1", "inv2"])
    assert not env.reg.rewrap_due(auth)
    inv_table.remove(env.reg.conn, "inv1", "2026-03-11T00:00:00Z")  # removal: rewrap due
    assert env.reg.rewrap_due(env.reg.get("CA1-2026-0042"))
    env.at(T0 + timedelta(days=400))  # long expired: still listed while a rewrap is due
    assert [x.authorisation.ref for x in env.reg.list()] == ["CA1-2026-0042"]


def test_unknown_reference(env: Env) -> None:
    with pytest.raises(RegistryError, match="no authorisation with reference 'NOPE'"):
        env.reg.cancel("NOPE", "reason")

"""`decide`: full capture only under an active authorisation covering the principal, channel and
instant. Unit cases, then a hypothesis property test over random authorisation histories,
driven once through the pure rules and once through the real SQLite registry, against an
independent oracle of each authorisation's active interval."""

from __future__ import annotations

import calendar
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.policy import RuleViolation, rules
from appliance.policy.decide import decide
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    Channel,
    EventKind,
    HistoryEvent,
    Officer,
    Purpose,
    Rank,
    Role,
)
from appliance.policy.officer_register import OfficerRegister
from appliance.policy.registry import Registry, load_all
from appliance.policy.snapshot import Snapshot
from store import investigators as inv_table
from store import signing
from store import sqlite as store_sqlite
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths

BASE = datetime(2026, 1, 1, tzinfo=UTC)
HOPS = Officer("p100", "Pat Hops", "head_of_professional_standards", Rank.SUPERINTENDENT)
HR = Officer("p200", "Dee Hr", "director_of_hr", Rank.STAFF)
DUTY = Officer("p300", "Ian Duty", "duty_inspector", Rank.INSPECTOR)
US = timedelta(microseconds=1)


def app(
    ref: str,
    subject: str = "p1",
    *,
    start: datetime = BASE,
    urgent: bool = False,
    channels: tuple[Channel, ...] = (Channel.WEB,),
    case: CaseType = CaseType.CRIMINAL,
    open_dnd: bool = False,
) -> Application:
    officer = DUTY if urgent else (HR if case is CaseType.STAFF_DISCIPLINE else HOPS)
    return Application(
        ref,
        subject,
        case,
        (Purpose.ESTABLISHING_FACTS,),
        channels,
        officer,
        "n",
        "p",
        "c",
        True,
        "",
        start,
        ("inv1",),
        urgent,
        open_dnd,
    )


def granted(a: Application) -> Authorisation:
    kind = EventKind.URGENT if a.urgent else EventKind.GRANT
    ev = HistoryEvent(1, a.ref, kind, a.start, "t", a.officer, expiry=rules.initial_expiry(a))
    return Authorisation(a, "age1pub", a.start, (ev,))


# -- unit cases --------------------------------------------------------------------------------
def test_full_only_inside_start_to_expiry_for_granted_channel() -> None:
    auth = granted(app("R1", channels=(Channel.WEB, Channel.EMAIL)))
    snap = Snapshot.build([auth])
    inside = BASE + timedelta(days=10)
    assert decide(snap, "p1", "web", inside).refs == ("R1",)
    assert decide(snap, "p1", Channel.EMAIL, inside).full
    assert not decide(snap, "p1", "packets", inside).full
    assert not decide(snap, "p2", "web", inside).full
    assert not decide(snap, "p1", "web", BASE - US).full
    assert decide(snap, "p1", "web", BASE).full
    assert decide(snap, "p1", "web", auth.expiry - US).full
    assert not decide(snap, "p1", "web", auth.expiry).full


def test_unresolved_principal_is_never_full() -> None:
    snap = Snapshot.build([granted(app("R1"))])
    decision = decide(snap, None, "web", BASE + timedelta(days=1))
    assert not decision.full and decision.refs == () and decision.principal is None


def test_every_active_authorisation_is_listed() -> None:
    snap = Snapshot.build(
        [
            granted(app("R1")),
            granted(app("R2", start=BASE + timedelta(days=5))),
            granted(app("R3", subject="p2")),
        ]
    )
    assert decide(snap, "p1", "web", BASE + timedelta(days=1)).refs == ("R1",)
    assert decide(snap, "p1", "web", BASE + timedelta(days=6)).refs == ("R1", "R2")


def test_cancellation_answers_as_then() -> None:
    cancel_at = BASE + timedelta(days=3)
    auth = granted(app("R1")).appended(
        HistoryEvent(2, "R1", EventKind.CANCEL, cancel_at, "t", text="done")
    )
    snap = Snapshot.build([auth])
    assert decide(snap, "p1", "web", cancel_at - US).full  # before the cancellation: as then
    assert not decide(snap, "p1", "web", cancel_at).full
    assert not decide(snap, "p1", "web", cancel_at + timedelta(days=1)).full


def test_do_not_decrypt_servers_need_an_authorisation_that_opens_them() -> None:
    closed = granted(app("R1"))
    opening = granted(app("R2", open_dnd=True))
    at = BASE + timedelta(days=1)
    snap = Snapshot.build([closed], do_not_decrypt=["*.nhs.uk", "bank.example"])
    for name in ("www.nhs.uk", "WWW.NHS.UK.", "nhs.uk", "a.b.nhs.uk", "bank.example"):
        decision = decide(snap, "p1", "web", at, server_name=name)
        assert not decision.full and decision.do_not_decrypt, name
    other = decide(snap, "p1", "web", at, server_name="news.example")
    assert other.full and not other.do_not_decrypt
    assert not decide(snap, "p1", "web", at, server_name="notnhs.uk").do_not_decrypt
    both = Snapshot.build([closed, opening], do_not_decrypt=["*.nhs.uk"])
    assert decide(both, "p1", "web", at, server_name="www.nhs.uk").refs == ("R2",)
    assert decide(both, "p1", "web", at, server_name="example.org").refs == ("R1", "R2")


def test_snapshot_indexes_however_built_and_lists_current_subjects() -> None:
    auths = (granted(app("R1", channels=(Channel.PACKETS,))), granted(app("R2", subject="p2")))
    snap = Snapshot(auths, do_not_decrypt=("*.NHS.UK",))
    at = BASE + timedelta(days=1)
    assert decide(snap, "p2", "web", at).refs == ("R2",)
    assert decide(snap, "p2", "web", at, server_name="x.nhs.uk").do_not_decrypt
    assert snap.subjects_at(at) == {"p1", "p2"}
    assert snap.subjects_at(at, "packets") == {"p1"}
    assert snap.subjects_at(BASE - US) == frozenset()


def test_naive_instant_is_utc() -> None:
    snap = Snapshot.build([granted(app("R1"))])
    naive = datetime(2026, 1, 2, 0, 0)
    decision = decide(snap, "p1", "web", naive)
    assert decision.full and decision.at == naive.replace(tzinfo=UTC)


def test_unknown_channel_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide(Snapshot.build(), "p1", "fax", BASE)


# -- property test -----------------------------------------------------------------------------
def add_months_oracle(when: datetime, months: int) -> datetime:
    """Independent month arithmetic: step month by month, clamp at the end."""
    year, month = when.year, when.month
    for _ in range(months):
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return when.replace(
        year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1])
    )


@dataclass
class Spec:
    ref: str
    subject: str
    case: CaseType
    urgent: bool
    channels: tuple[Channel, ...]
    start: datetime
    made: datetime


@dataclass
class Scenario:
    specs: list[Spec]
    ops: list[tuple[datetime, str, int, str]]  # (when, kind, spec index, officer choice)
    probes: list[datetime] = field(default_factory=list)


OFFICERS = ("fit", "wrong", "self")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    specs = []
    ops: list[tuple[datetime, str, int, str]] = []
    for i in range(draw(st.integers(1, 3))):
        start = BASE + timedelta(minutes=draw(st.integers(0, 60 * 24 * 200)))
        made = start - timedelta(minutes=draw(st.integers(0, 60 * 24 * 5)))
        channels = tuple(
            draw(st.lists(st.sampled_from(list(Channel)), min_size=1, max_size=3, unique=True))
        )
        spec = Spec(
            f"REF-{i}",
            draw(st.sampled_from(["p1", "p2"])),
            draw(st.sampled_from(list(CaseType))),
            draw(st.booleans()),
            channels,
            start,
            made,
        )
        specs.append(spec)
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(["ratify", "renew", "cancel", "review"]))
            offset = draw(
                st.one_of(
                    st.integers(-60 * 24 * 3, 60 * 24 * 400),  # minutes from start
                    st.sampled_from([60 * 72 - 1, 60 * 72, 60 * 72 + 1]),
                )
            )
            ops.append(
                (start + timedelta(minutes=offset), kind, i, draw(st.sampled_from(OFFICERS)))
            )
    probes = [
        BASE + timedelta(minutes=m)
        for m in draw(st.lists(st.integers(-1000, 60 * 24 * 700), max_size=15))
    ]
    return Scenario(specs, ops, probes)


def officer_for(spec: Spec, choice: str) -> Officer:
    if choice == "self":
        return Officer(spec.subject, "Self", "head_of_professional_standards", Rank.INSPECTOR)
    fits_hr = spec.case is CaseType.STAFF_DISCIPLINE
    if choice == "fit":
        return HR if fits_hr else HOPS
    return HOPS if fits_hr else HR


def spec_application(spec: Spec) -> Application:
    return app(
        spec.ref,
        spec.subject,
        start=spec.start,
        urgent=spec.urgent,
        channels=spec.channels,
        case=spec.case,
    )


def timeline(sc: Scenario) -> list[tuple[datetime, str, int, str]]:
    """Grants and changes in clock order; a change before its grant is dropped."""
    events = [(s.made, "grant", i, "fit") for i, s in enumerate(sc.specs)] + sc.ops
    events.sort(key=lambda e: (e[0], e[1] != "grant"))
    granted_at: dict[int, datetime] = {}
    out = []
    for when, kind, i, choice in events:
        if kind == "grant":
            granted_at[i] = when
        elif i not in granted_at:
            continue
        out.append((when, kind, i, choice))
    return out


Accepted = list[tuple[datetime, str, int]]


def run_pure(sc: Scenario) -> tuple[list[Authorisation], Accepted]:
    auths: dict[int, Authorisation] = {}
    accepted: Accepted = []
    for when, kind, i, choice in timeline(sc):
        spec = sc.specs[i]
        if kind == "grant":
            if spec.urgent:
                same = [a for a in auths.values() if a.subject == spec.subject]
                try:
                    rules.check_urgent_chain(same, when)
                except RuleViolation:
                    continue
            auths[i] = granted(spec_application(spec))
            accepted.append((when, kind, i))
            continue
        if i not in auths:  # its grant was refused
            continue
        auth, officer = auths[i], officer_for(spec, choice)
        seq = len(auth.history) + 1
        try:
            if kind == "ratify":
                expiry = rules.check_ratify(auth, officer, when)
                ev = HistoryEvent(
                    seq, auth.ref, EventKind.RATIFY, when, "t", officer, expiry=expiry
                )
            elif kind == "renew":
                expiry = rules.check_renew(auth, officer, "results so far", when)
                ev = HistoryEvent(seq, auth.ref, EventKind.RENEW, when, "t", officer, expiry=expiry)
            elif kind == "review":
                rules.check_review(auth, officer, "reviewed", when)
                ev = HistoryEvent(seq, auth.ref, EventKind.REVIEW, when, "t", officer)
            else:
                rules.check_cancel(auth, "no longer justified", when)
                ev = HistoryEvent(seq, auth.ref, EventKind.CANCEL, when, "t", text="x")
        except RuleViolation:
            continue
        auths[i] = auth.appended(ev)
        accepted.append((when, kind, i))
    return [auths[i] for i in sorted(auths)], accepted


def oracle_intervals(sc: Scenario, accepted: Accepted) -> dict[str, tuple[datetime, datetime]]:
    """[start, end) per reference, from the accepted events alone, checking the rules held."""
    out = {}
    for i, spec in enumerate(sc.specs):
        mine = [(w, k) for w, k, j in accepted if j == i]
        if not mine:
            continue
        ratified = any(k == "ratify" for _, k in mine)
        expiry = (
            spec.start + timedelta(hours=72)
            if spec.urgent and not ratified
            else add_months_oracle(spec.start, 3)
        )
        cancel = None
        for when, kind in mine:
            assert cancel is None or kind == "grant", "a change was accepted after cancellation"
            if kind == "ratify":
                assert spec.urgent and when < spec.start + timedelta(hours=72), "late ratify"
            if kind == "renew":
                assert when < expiry, "renewal accepted at or after expiry"
                assert when >= expiry - timedelta(days=30), "renewal before the 30-day window"
                assert not spec.urgent or ratified
                expiry = add_months_oracle(expiry, 3)
            if kind == "cancel":
                cancel = when
        end = expiry if cancel is None else max(spec.start, min(expiry, cancel))
        out[spec.ref] = (spec.start, end)
    return out


def check_no_urgent_chain(
    sc: Scenario, accepted: Accepted, intervals: dict[str, tuple[datetime, datetime]]
) -> None:
    """An accepted urgent grant never follows an unratified urgent grant of the same subject that
    is still running or ended less than 72 hours before."""
    ratified = {i for _, k, i in accepted if k == "ratify"}
    grants = sorted((w, i) for w, k, i in accepted if k == "grant")
    for n, (when, i) in enumerate(grants):
        if not sc.specs[i].urgent:
            continue
        for _, j in grants[:n]:
            earlier = sc.specs[j]
            if earlier.urgent and j not in ratified and earlier.subject == sc.specs[i].subject:
                end = intervals[earlier.ref][1]
                assert when >= end + timedelta(hours=72), "urgent grants chained"


def check_decisions(sc: Scenario, snap: Snapshot, accepted: Accepted) -> None:
    intervals = oracle_intervals(sc, accepted)
    check_no_urgent_chain(sc, accepted, intervals)
    probes = list(sc.probes)
    for start, end in intervals.values():
        probes += [
            start - US,
            start,
            end - US,
            end,
            start + timedelta(hours=72) - US,
            start + timedelta(hours=72),
        ]
    for at in probes:
        for principal in ("p1", "p2", "p3", None):
            for channel in Channel:
                expected = tuple(
                    s.ref
                    for s in sc.specs
                    if s.ref in intervals
                    and s.subject == principal
                    and channel in s.channels
                    and intervals[s.ref][0] <= at < intervals[s.ref][1]
                )
                decision = decide(snap, principal, channel, at)
                assert set(decision.refs) == set(expected), (at, principal, channel)
                assert decision.full == bool(expected)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_decide_matches_oracle_over_random_histories(sc: Scenario) -> None:
    auths, accepted = run_pure(sc)
    check_decisions(sc, Snapshot.build(auths), accepted)


# -- the same through the real registry (SQLite, audit log, key store) -------------------------
@pytest.fixture(scope="module")
def investigator_recipient(tmp_path_factory: pytest.TempPathFactory) -> str:
    key = tmp_path_factory.mktemp("inv") / "inv1.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    out = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def run_registry(sc: Scenario, root: Path, recipient: str) -> tuple[Registry, Accepted]:
    paths = DataPaths(root)
    key = signing.create(paths, "gw1")
    now = [BASE]
    clock = Clock(source=lambda: now[0])
    conn = store_sqlite.connect(paths.registry)
    reg = Registry(
        conn,
        clock=clock,
        actor="tester",
        audit=AuditLog(paths, key, clock, witness=False),
        paths=paths,
    )
    inv_table.add(conn, "inv1", recipient, "p900", "2025-12-01T00:00:00Z")
    # officers are registry facts: register every officer the scenario may name (the subjects
    # too, for the "self" choice; rank only matters for urgent grants, which they never make)
    register = OfficerRegister(reg)
    selves = [Officer(s, "Self", Role.HEAD_OF_PROFESSIONAL_STANDARDS, Rank.SUPERINTENDENT)
              for s in sorted({spec.subject for spec in sc.specs})]  # fmt: skip
    for o in (HOPS, HR, DUTY, *selves):
        register.add(o.principal, name=o.name, role=o.role, rank=o.rank.value,
                     valid_from=BASE - timedelta(days=365))  # fmt: skip
    accepted: Accepted = []
    for when, kind, i, choice in timeline(sc):
        spec = sc.specs[i]
        now[0] = when
        officer = officer_for(spec, choice)
        if kind != "grant" and not any(k == "grant" and j == i for _, k, j in accepted):
            continue  # its grant was refused
        try:
            if kind == "grant":
                reg.grant(spec_application(spec))
            elif kind == "ratify":
                reg.ratify(spec.ref, officer.principal)
            elif kind == "renew":
                reg.renew(spec.ref, officer.principal, "results so far")
            elif kind == "review":
                reg.review(spec.ref, officer.principal, "reviewed")
            else:
                reg.cancel(spec.ref, "no longer justified")
        except RuleViolation:
            continue
        accepted.append((when, kind, i))
    return reg, accepted


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_registry_histories_decide_like_the_oracle(
    sc: Scenario, investigator_recipient: Any
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reg, accepted = run_registry(sc, Path(tmp), investigator_recipient)
        try:
            _, pure_accepted = run_pure(sc)
            assert accepted == pure_accepted  # the registry applies exactly the rules
            snap = Snapshot.build(load_all(reg.conn))
            check_decisions(sc, snap, accepted)
        finally:
            reg.close()

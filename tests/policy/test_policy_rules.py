"""Table tests for the policy's rules (appliance.policy.rules): who may authorise, expiry
arithmetic, urgent ratification, renewal, reviews, warnings and application validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.policy import InvalidInput, RuleViolation, rules
from appliance.policy import application as application_form
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
)

T0 = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
SUBJECT_AS_HOPS = Officer(
    "p12345", "Sub Ject", "head_of_professional_standards", Rank.SUPERINTENDENT
)
HOPS = Officer("p100", "Pat Hops", "head_of_professional_standards", Rank.SUPERINTENDENT)
HR = Officer("p200", "Dee Hr", "director_of_hr", Rank.STAFF)
DUTY_INSPECTOR = Officer("p300", "Ian Duty", "duty_inspector", Rank.INSPECTOR)
ACU = Officer("p400", "Ann Acu", "acu_inspector", Rank.INSPECTOR)
REGISTER = {o.principal: o for o in (HOPS, HR, DUTY_INSPECTOR, ACU, SUBJECT_AS_HOPS)}


def registered(principal: str) -> Officer:
    """A stand-in for the officer register (the registry's own tests use the real one)."""
    if principal not in REGISTER:
        raise RuleViolation(f"officer {principal} is not in the officer register")
    return REGISTER[principal]


def build(fields: dict[str, Any], *, urgent: bool = False, now: datetime = T0) -> Application:
    return application_form.build_application(
        fields, urgent=urgent, now=now, resolve_officer=registered
    )


def application(**over: Any) -> Application:
    base: dict[str, Any] = dict(
        ref="CA1-2026-0042",
        subject="p12345",
        case_type=CaseType.CRIMINAL,
        purposes=(Purpose.PREVENTING_OR_DETECTING_CRIME,),
        channels=(Channel.WEB,),
        officer=HOPS,
        necessity="n",
        proportionality="p",
        collateral="c",
        ripa_considered=True,
        ripa_note="",
        start=T0,
        investigators=("inv1",),
    )
    base.update(over)
    return Application(**base)


def granted(app: Application) -> Authorisation:
    kind = EventKind.URGENT if app.urgent else EventKind.GRANT
    event = HistoryEvent(
        1,
        app.ref,
        kind,
        app.start,
        "tester",
        app.officer,
        expiry=rules.initial_expiry(app),
        investigators=app.investigators,
    )
    return Authorisation(app, "age1pub", app.start, (event,))


def event(auth: Authorisation, kind: EventKind, at: datetime, **kw: Any) -> Authorisation:
    return auth.appended(HistoryEvent(len(auth.history) + 1, auth.ref, kind, at, "tester", **kw))


# -- role by case type -------------------------------------------------------------------------
ROLE_TABLE = [
    (CaseType.CRIMINAL, "head_of_professional_standards", True),
    (CaseType.CRIMINAL, "acu_inspector", True),
    (CaseType.CRIMINAL, "director_of_hr", False),
    (CaseType.CRIMINAL, "head_of_personnel_services", False),
    (CaseType.CRIMINAL, "duty_inspector", False),
    (CaseType.OFFICER_MISCONDUCT, "head_of_professional_standards", True),
    (CaseType.OFFICER_MISCONDUCT, "acu_inspector", True),
    (CaseType.OFFICER_MISCONDUCT, "director_of_hr", False),
    (CaseType.OFFICER_MISCONDUCT, "head_of_personnel_services", False),
    (CaseType.OFFICER_MISCONDUCT, "duty_inspector", False),
    (CaseType.STAFF_DISCIPLINE, "head_of_professional_standards", False),
    (CaseType.STAFF_DISCIPLINE, "acu_inspector", False),
    (CaseType.STAFF_DISCIPLINE, "director_of_hr", True),
    (CaseType.STAFF_DISCIPLINE, "head_of_personnel_services", True),
    (CaseType.STAFF_DISCIPLINE, "duty_inspector", False),
]


@pytest.mark.parametrize(("case_type", "role", "allowed"), ROLE_TABLE)
def test_standard_grant_role_by_case_type(case_type: CaseType, role: str, allowed: bool) -> None:
    app = application(
        case_type=case_type, officer=Officer("p100", "Officer", role, Rank.SUPERINTENDENT)
    )
    if allowed:
        rules.check_application(app)
        return
    with pytest.raises(RuleViolation) as info:
        rules.check_application(app)
    message = str(info.value)
    assert repr(role) in message and case_type.value in message
    for allowed_role in rules.ALLOWED_ROLES[case_type]:
        assert allowed_role.value in message  # the message lists the roles allowed


@pytest.mark.parametrize(("case_type", "role", "allowed"), ROLE_TABLE)
def test_ratification_role_by_case_type(case_type: CaseType, role: str, allowed: bool) -> None:
    auth = granted(application(case_type=case_type, urgent=True, officer=DUTY_INSPECTOR))
    officer = Officer("p101", "Officer", role, Rank.CHIEF_INSPECTOR)
    at = T0 + timedelta(hours=1)
    if allowed:
        assert rules.check_ratify(auth, officer, at) == rules.standard_expiry(T0)
    else:
        with pytest.raises(RuleViolation, match="allowed roles"):
            rules.check_ratify(auth, officer, at)


@pytest.mark.parametrize("rank", list(Rank))
def test_urgent_needs_inspector_rank_or_above_any_role(rank: Rank) -> None:
    app = application(urgent=True, officer=Officer("p300", "Any", "custody_sergeant", rank))
    if rank.level >= Rank.INSPECTOR.level:
        rules.check_application(app)
    else:
        with pytest.raises(RuleViolation, match="rank inspector or above"):
            rules.check_application(app)


def test_staff_rank_is_below_inspector() -> None:
    assert Rank.STAFF.level < Rank.CONSTABLE.level < Rank.INSPECTOR.level
    assert Rank.CHIEF_CONSTABLE.level == max(r.level for r in Rank)


@pytest.mark.parametrize("urgent", [False, True])
def test_officer_cannot_authorise_themselves(urgent: bool) -> None:
    app = application(subject="p100", officer=HOPS, urgent=urgent)
    with pytest.raises(RuleViolation, match="cannot authorise monitoring of themselves"):
        rules.check_application(app)


# -- expiry arithmetic -------------------------------------------------------------------------
EXPIRY_TABLE = [
    ("2026-11-30T10:15:00", "2027-02-28T10:15:00"),  # clamp to February, common year
    ("2027-11-30T10:15:00", "2028-02-29T10:15:00"),  # leap year
    ("2027-11-29T00:00:00", "2028-02-29T00:00:00"),
    ("2026-08-31T23:59:59", "2026-11-30T23:59:59"),
    ("2026-12-31T12:00:00", "2027-03-31T12:00:00"),  # across the year end, no clamp
    ("2027-01-31T08:00:00", "2027-04-30T08:00:00"),
    ("2028-02-29T06:00:00", "2028-05-29T06:00:00"),  # from a leap day
    ("2026-03-10T09:30:00.250000", "2026-06-10T09:30:00.250000"),  # time of day kept exactly
    ("2026-10-01T00:00:00", "2027-01-01T00:00:00"),
]


@pytest.mark.parametrize(("start", "expiry"), EXPIRY_TABLE)
def test_standard_expiry_three_calendar_months(start: str, expiry: str) -> None:
    s = datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert rules.standard_expiry(s) == datetime.fromisoformat(expiry).replace(tzinfo=UTC)
    assert rules.initial_expiry(application(start=s)) == rules.standard_expiry(s)


def test_urgent_expires_72_hours_after_start() -> None:
    app = application(urgent=True, officer=DUTY_INSPECTOR)
    assert rules.initial_expiry(app) == T0 + timedelta(hours=72)


# -- ratification ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("after", "ok"),
    [
        (timedelta(hours=71, minutes=59), True),
        (timedelta(hours=71, minutes=59, seconds=59, microseconds=999999), True),
        (timedelta(hours=72), False),
        (timedelta(hours=72, minutes=1), False),
    ],
)
def test_ratification_window(after: timedelta, ok: bool) -> None:
    auth = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    if ok:
        expiry = rules.check_ratify(auth, HOPS, T0 + after)
        assert expiry == datetime(2026, 6, 10, 9, 30, tzinfo=UTC)  # 3 months from ORIGINAL start
    else:
        with pytest.raises(RuleViolation, match="too late"):
            rules.check_ratify(auth, HOPS, T0 + after)


def test_ratified_urgent_becomes_standard_from_original_start() -> None:
    auth = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    at = T0 + timedelta(hours=50)
    expiry = rules.check_ratify(auth, HOPS, at)
    auth = event(auth, EventKind.RATIFY, at, officer=HOPS, expiry=expiry)
    assert auth.expiry == rules.standard_expiry(T0)
    assert not auth.awaiting_ratification
    assert auth.active_at(T0 + timedelta(hours=80))
    with pytest.raises(RuleViolation, match="ratified already"):
        rules.check_ratify(auth, HOPS, at + timedelta(hours=1))


def test_ratification_refusals() -> None:
    urgent = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    with pytest.raises(RuleViolation, match="not an urgent"):
        rules.check_ratify(granted(application()), HOPS, T0 + timedelta(hours=1))
    with pytest.raises(RuleViolation, match="p100 is the subject"):
        rules.check_ratify(
            granted(application(urgent=True, officer=DUTY_INSPECTOR, subject="p100")), HOPS, T0
        )
    cancelled = event(urgent, EventKind.CANCEL, T0 + timedelta(hours=2), text="no longer")
    with pytest.raises(RuleViolation, match="was cancelled"):
        rules.check_ratify(cancelled, HOPS, T0 + timedelta(hours=3))


def test_unratified_urgent_lapses_at_72_hours() -> None:
    auth = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    assert auth.active_at(T0 + timedelta(hours=71, minutes=59))
    assert not auth.active_at(T0 + timedelta(hours=72))
    assert auth.state(T0 + timedelta(hours=1)) == "awaiting_ratification"
    assert auth.state(T0 + timedelta(hours=72)) == "expired"


# -- renewal -----------------------------------------------------------------------------------
def test_renewal_extends_three_months_from_current_expiry() -> None:
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    auth = granted(application(start=start))
    assert auth.expiry == datetime(2027, 2, 28, 10, 0, tzinfo=UTC)
    at = datetime(2027, 2, 20, tzinfo=UTC)
    expiry = rules.check_renew(auth, HOPS, "two suspects identified", at)
    assert expiry == datetime(2027, 5, 28, 10, 0, tzinfo=UTC)
    auth = event(auth, EventKind.RENEW, at, officer=HOPS, text="two", expiry=expiry)
    expiry2 = rules.check_renew(auth, HOPS, "more", datetime(2027, 5, 1, tzinfo=UTC))
    assert expiry2 == datetime(2027, 8, 28, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "results", "message"),
    [
        (
            T0 + timedelta(days=92),
            "update",
            "renewal is possible only before expiry",
        ),  # 10 Jun = exp
        (datetime(2026, 6, 10, 9, 29, 59, tzinfo=UTC), "  ", "results update must not be empty"),
    ],
)
def test_renewal_refusals(at: datetime, results: str, message: str) -> None:
    auth = granted(application())
    with pytest.raises(RuleViolation, match=message):
        rules.check_renew(auth, HOPS, results, at)


def test_renewal_at_the_last_instant_before_expiry_is_allowed() -> None:
    auth = granted(application())
    last = auth.expiry - timedelta(microseconds=1)
    assert rules.check_renew(auth, HOPS, "results", last) == rules.add_months(auth.expiry, 3)


def test_renewal_of_urgent_cancelled_or_by_wrong_role_refused() -> None:
    urgent = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    with pytest.raises(RuleViolation, match="awaiting ratification"):
        rules.check_renew(urgent, HOPS, "results", T0 + timedelta(hours=1))
    auth = granted(application())
    with pytest.raises(RuleViolation, match="allowed roles"):
        rules.check_renew(auth, HR, "results", T0 + timedelta(days=1))
    cancelled = event(auth, EventKind.CANCEL, T0 + timedelta(days=2), text="done")
    with pytest.raises(RuleViolation, match="was cancelled"):
        rules.check_renew(cancelled, HOPS, "results", T0 + timedelta(days=3))


# -- cancellation, reviews, warnings -----------------------------------------------------------
def test_cancellation_is_immediate_and_needs_a_reason() -> None:
    auth = granted(application())
    at = T0 + timedelta(days=3)
    with pytest.raises(RuleViolation, match="reason must not be empty"):
        rules.check_cancel(auth, "", at)
    rules.check_cancel(auth, "no longer justified", at)
    auth = event(auth, EventKind.CANCEL, at, text="no longer justified")
    assert auth.active_at(at - timedelta(microseconds=1))
    assert not auth.active_at(at)
    assert auth.state(at) == "cancelled"
    with pytest.raises(RuleViolation, match="cancelled again"):
        rules.check_cancel(auth, "again", at + timedelta(seconds=1))


def test_review_due_monthly_from_start_or_last_review() -> None:
    auth = granted(application())
    month = datetime(2026, 4, 10, 9, 30, tzinfo=UTC)
    assert not rules.review_due(auth, month - timedelta(seconds=1))
    assert rules.review_due(auth, month)
    auth = event(auth, EventKind.REVIEW, month + timedelta(days=2), officer=HOPS, text="ok")
    assert not rules.review_due(auth, month + timedelta(days=20))
    assert rules.review_due(auth, datetime(2026, 5, 12, 9, 30, tzinfo=UTC))
    with pytest.raises(RuleViolation, match="cannot review"):
        rules.check_review(auth, SUBJECT_AS_HOPS, "ok", month)
    with pytest.raises(RuleViolation, match="review note must not be empty"):
        rules.check_review(auth, HOPS, " ", month)


@pytest.mark.parametrize(
    ("urgent", "at", "flags"),
    [
        (False, T0 + timedelta(days=1), ()),
        (False, datetime(2026, 4, 11, tzinfo=UTC), ("review_due",)),
        (False, datetime(2026, 6, 3, 9, 30, tzinfo=UTC), ("review_due", "expiring_soon")),
        (False, datetime(2026, 6, 10, 9, 30, tzinfo=UTC), ()),  # expired: nothing to flag
        (True, T0 + timedelta(hours=1), ("expiring_soon", "awaiting_ratification")),
        (True, T0 + timedelta(hours=72), ()),
    ],
)
def test_warnings(urgent: bool, at: datetime, flags: tuple[str, ...]) -> None:
    officer = DUTY_INSPECTOR if urgent else HOPS
    assert rules.warnings(granted(application(urgent=urgent, officer=officer)), at) == flags


# -- applications from the command line or a file ----------------------------------------------
def fields(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        ref="CA1-2026-0042",
        subject="p12345",
        case_type="criminal",
        purpose=["preventing_or_detecting_crime,establishing_facts"],
        channel=["web", "email"],
        officer="p100",
        necessity="needed",
        proportionality="least intrusive",
        collateral="family mail excluded",
        ripa_considered="yes",
        investigator=["inv1"],
    )
    base.update(over)
    return base


def test_build_application_parses_lists_and_defaults_start_to_now() -> None:
    app = build(fields())
    assert app.officer == HOPS  # name, role and rank come from the register
    assert app.purposes == (Purpose.PREVENTING_OR_DETECTING_CRIME, Purpose.ESTABLISHING_FACTS)
    assert app.channels == (Channel.WEB, Channel.EMAIL)
    assert app.start == T0 and app.ripa_considered and app.retention_days is None


@pytest.mark.parametrize(
    ("start", "result"),
    [
        (T0 - timedelta(seconds=30), T0),  # within the skew: counts as now
        (T0 + timedelta(days=2), T0 + timedelta(days=2)),  # a future start is kept
    ],
)
def test_start_skew_and_future(start: datetime, result: datetime) -> None:
    app = build(fields(start=start.isoformat()))
    assert app.start == result


def test_start_in_the_past_refused() -> None:
    with pytest.raises(RuleViolation, match="is in the past"):
        build(fields(start="2026-03-10T09:28:59Z"))


@pytest.mark.parametrize(
    ("over", "error", "message"),
    [
        ({"purpose": ["fishing"]}, InvalidInput, "purpose 'fishing': must be one of establishing"),
        ({"channel": ["fax"]}, InvalidInput, "channel 'fax': must be one of web, email, packets"),
        ({"channel": [" , "]}, InvalidInput, "at least one channel is required"),
        ({"case_type": "burglary"}, InvalidInput, "case type 'burglary'"),
        ({"officer": "p999"}, RuleViolation, "p999 is not in the officer register"),
        ({"officer": "p100\n"}, InvalidInput, r"officer 'p100\\n'"),
        ({"subject": "p12345\n"}, InvalidInput, r"subject 'p12345\\n'"),
        ({"ref": "CA1-1\n"}, InvalidInput, r"reference 'CA1-1\\n'"),
        ({"start": "2027-01-31T10:00"}, InvalidInput, "no time zone; `Z` or an offset"),
        ({"start": "2027-01-31"}, InvalidInput, "a date-time is required"),
        ({"start": "9999-12-31T23:59:59Z"}, InvalidInput, "out of range"),
        ({"retention_days": 10**6}, InvalidInput, "at most 36525"),
        ({"retention_days": "9" * 5000}, InvalidInput, "whole number"),
        ({"subject": "P12345"}, InvalidInput, "subject 'P12345'"),
        ({"ref": "../etc"}, InvalidInput, "reference '../etc'"),
        ({"ref": "a/b"}, InvalidInput, "reference 'a/b'"),
        ({"ref": "a..b"}, InvalidInput, "reference 'a..b'"),
        ({"ref": ".hidden"}, InvalidInput, "reference '.hidden'"),
        ({"ref": "x" * 65}, InvalidInput, "1-64 characters"),
        ({"necessity": "  "}, RuleViolation, "necessity statement must not be empty"),
        ({"proportionality": ""}, InvalidInput, "missing required field.*--proportionality"),
        ({"collateral": "\t"}, RuleViolation, "collateral intrusion statement must not be empty"),
        ({"ripa_considered": "maybe"}, InvalidInput, "RIPA considered 'maybe': must be yes or no"),
        ({"ripa_considered": "no"}, RuleViolation, "RIPA note saying why is required"),
        ({"retention_days": 0}, InvalidInput, "retention days 0: must be greater than 0"),
        ({"retention_days": "ten"}, InvalidInput, "whole number"),
        ({"officer": "p200"}, RuleViolation, "allowed roles"),
        ({"officer": "p12345"}, RuleViolation, "themselves"),
    ],
)
def test_application_refusals(over: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build(fields(**over))


def test_ripa_no_with_note_is_accepted() -> None:
    app = build(fields(ripa_considered="no", ripa_note="not covert"))
    assert not app.ripa_considered and app.ripa_note == "not covert"


def test_file_fields_normalised_and_unknown_field_named() -> None:
    norm = application_form.normalise_fields(
        {"case-type": "criminal", "purposes": ["a"]}, "app.toml: "
    )
    assert norm == {"case_type": "criminal", "purpose": ["a"]}
    with pytest.raises(InvalidInput, match=r"app\.toml: colour: unknown field"):
        application_form.normalise_fields({"colour": "red"}, "app.toml: ")


@pytest.mark.parametrize("ref", ["CA1-2026-0042", "a", "PSD_2026.7", "0-x"])
def test_valid_refs(ref: str) -> None:
    assert rules.check_ref(ref) == ref


# -- the holes an attacker would use (issue 13) --------------------------------------------------
def test_urgent_grant_cannot_be_ratified_by_the_officer_who_gave_it() -> None:
    auth = granted(application(urgent=True, officer=ACU))  # ACU's role could ratify...
    with pytest.raises(RuleViolation, match=r"gave the urgent authorisation .* cannot ratify"):
        rules.check_ratify(auth, ACU, T0 + timedelta(hours=1))  # ...but not their own grant
    assert rules.check_ratify(auth, HOPS, T0 + timedelta(hours=1)) == rules.standard_expiry(T0)


WINDOW_TABLE = [
    pytest.param(30, timedelta(days=31), "only within 30 days", id="31d-before-refused"),
    pytest.param(30, timedelta(days=30), None, id="30d-before-accepted"),
    pytest.param(30, timedelta(microseconds=1), None, id="last-instant-accepted"),
    pytest.param(10, timedelta(days=11), "only within 10 days", id="configured-window"),
    pytest.param(10, timedelta(days=10), None, id="configured-window-edge"),
]


@pytest.mark.parametrize(("window", "before", "refused"), WINDOW_TABLE)
def test_renewal_window_before_expiry(window: int, before: timedelta, refused: str | None) -> None:
    auth = granted(application())
    at = auth.expiry - before
    if refused is None:
        expiry = rules.check_renew(auth, HOPS, "results", at, window_days=window)
        assert expiry == rules.add_months(auth.expiry, 3)
    else:
        with pytest.raises(RuleViolation, match=refused):
            rules.check_renew(auth, HOPS, "results", at, window_days=window)


def test_renewals_do_not_stack_in_one_period() -> None:
    auth = granted(application())
    # even with a window wide enough to reach back past the previous expiry
    at = auth.expiry - timedelta(days=5)
    expiry = rules.check_renew(auth, HOPS, "first", at, window_days=400)
    renewed = event(auth, EventKind.RENEW, at, officer=HOPS, text="first", expiry=expiry)
    with pytest.raises(RuleViolation, match="renewed already in this period"):
        rules.check_renew(renewed, HOPS, "second", at + timedelta(days=1), window_days=400)
    # in the next period (past the old expiry, inside the window) it is accepted again
    later = auth.expiry + timedelta(days=70)
    assert rules.check_renew(renewed, HOPS, "second", later) == rules.add_months(expiry, 3)


ACTS_BY_SUBJECT = [
    pytest.param("ratify", id="ratify"),
    pytest.param("renew", id="renew"),
    pytest.param("review", id="review"),
    pytest.param("cancel", id="cancel"),
    pytest.param("assign", id="assign"),
]


@pytest.mark.parametrize("act", ACTS_BY_SUBJECT)
def test_the_subject_never_acts_on_their_own_authorisation(act: str) -> None:
    urgent = granted(application(urgent=True, officer=DUTY_INSPECTOR))
    auth = granted(application())
    near_expiry = auth.expiry - timedelta(days=1)
    with pytest.raises(RuleViolation, match="p12345 is the subject of CA1-2026-0042"):
        if act == "ratify":
            rules.check_ratify(urgent, SUBJECT_AS_HOPS, T0 + timedelta(hours=1))
        elif act == "renew":
            rules.check_renew(auth, SUBJECT_AS_HOPS, "results", near_expiry)
        elif act == "review":
            rules.check_review(auth, SUBJECT_AS_HOPS, "ok", T0 + timedelta(days=31))
        elif act == "cancel":
            rules.check_cancel(auth, "stop it", T0 + timedelta(days=1), actor_principal="p12345")
        else:
            rules.check_assign(auth, "p12345")


def test_cancellation_open_to_anyone_but_the_subject() -> None:
    auth = granted(application())
    for actor in (None, "p100", "p900", "p200"):
        rules.check_cancel(auth, "no longer justified", T0, actor_principal=actor)


@pytest.mark.parametrize(
    ("reviewer", "refused"),
    [
        pytest.param(HOPS, None, id="hops-criminal"),
        pytest.param(ACU, None, id="acu-criminal"),
        pytest.param(HR, "cannot review a criminal case", id="hr-criminal"),
        pytest.param(DUTY_INSPECTOR, "cannot review a criminal case", id="duty-inspector"),
    ],
)
def test_review_is_an_act_of_an_officer_whose_role_fits(
    reviewer: Officer, refused: str | None
) -> None:
    auth = granted(application())
    at = T0 + timedelta(days=31)
    if refused is None:
        rules.check_review(auth, reviewer, "still necessary", at)
    else:
        with pytest.raises(RuleViolation, match=refused):
            rules.check_review(auth, reviewer, "still necessary", at)


@pytest.mark.parametrize(
    ("investigator", "refused"),
    [
        pytest.param("p900", None, id="independent-investigator"),
        pytest.param("p12345", "is the subject", id="the-subject"),
        pytest.param("p100", "authorised CA1-2026-0042 and cannot also be assigned", id="officer"),
    ],
)
def test_assignment_refuses_subject_and_authorising_officer(
    investigator: str, refused: str | None
) -> None:
    for target in (application(), granted(application())):  # at grant and at `auth assign`
        if refused is None:
            rules.check_assign(target, investigator)
        else:
            with pytest.raises(RuleViolation, match=refused):
                rules.check_assign(target, investigator)


def _urgent(ref: str, subject: str = "p12345", start: datetime = T0) -> Authorisation:
    return granted(
        application(ref=ref, subject=subject, urgent=True, officer=DUTY_INSPECTOR, start=start)
    )


H = timedelta(hours=1)
CHAIN_TABLE = [
    pytest.param(lambda: [_urgent("U1")], T0 + H, "awaiting ratification", id="live-unratified"),
    pytest.param(lambda: [_urgent("U1")], T0 + 72 * H, "ended unratified", id="just-lapsed"),
    pytest.param(lambda: [_urgent("U1")], T0 + 143 * H, "ended unratified", id="lapsed-71h-ago"),
    pytest.param(lambda: [_urgent("U1")], T0 + 144 * H, None, id="lapsed-72h-ago"),
    pytest.param(
        lambda: [event(_urgent("U1"), EventKind.CANCEL, T0 + H, text="x")],
        T0 + 2 * H,
        "ended unratified",
        id="cancelled-then-regranted",
    ),
    pytest.param(
        lambda: [
            event(
                _urgent("U1"),
                EventKind.RATIFY,
                T0 + H,
                officer=HOPS,
                expiry=rules.standard_expiry(T0),
            )
        ],
        T0 + 2 * H,
        None,
        id="ratified-is-no-chain",
    ),
    pytest.param(lambda: [_urgent("U1", subject="p777")], T0 + H, None, id="other-subject"),
    pytest.param(lambda: [granted(application(ref="S1"))], T0 + H, None, id="standard-grant"),
]


@pytest.mark.parametrize(("existing", "at", "refused"), CHAIN_TABLE)
def test_urgent_grants_do_not_chain(existing: Any, at: datetime, refused: str | None) -> None:
    auths = [a for a in existing() if a.subject == "p12345"]
    if refused is None:
        rules.check_urgent_chain(auths, at)
    else:
        with pytest.raises(RuleViolation, match=refused):
            rules.check_urgent_chain(auths, at)


STANDING_TABLE = [
    ("head_of_professional_standards", Rank.CONSTABLE, False),
    ("head_of_professional_standards", Rank.INSPECTOR, False),
    ("head_of_professional_standards", Rank.STAFF, False),
    ("head_of_professional_standards", Rank.CHIEF_INSPECTOR, True),
    ("head_of_professional_standards", Rank.CHIEF_SUPERINTENDENT, True),
    ("acu_inspector", Rank.SERGEANT, False),
    ("acu_inspector", Rank.STAFF, False),
    ("acu_inspector", Rank.INSPECTOR, True),
    ("director_of_hr", Rank.STAFF, True),
    ("director_of_hr", Rank.CONSTABLE, False),
    ("director_of_hr", Rank.SUPERINTENDENT, True),
    ("head_of_personnel_services", Rank.SERGEANT, False),
    ("head_of_personnel_services", Rank.STAFF, True),
    ("duty_inspector", Rank.CONSTABLE, True),  # other roles: urgent grants only, by rank
]


@pytest.mark.parametrize(("role", "rank", "ok"), STANDING_TABLE)
def test_role_and_rank_that_cannot_go_together(role: str, rank: Rank, ok: bool) -> None:
    if ok:
        rules.check_officer_standing(role, rank)
    else:
        with pytest.raises(RuleViolation, match="cannot hold it"):
            rules.check_officer_standing(role, rank)


TIME_TABLE = [
    ("2027-01-31T10:00:00Z", datetime(2027, 1, 31, 10, tzinfo=UTC)),
    ("2027-01-31T10:00:00+01:00", datetime(2027, 1, 31, 9, tzinfo=UTC)),
    ("2027-01-31T10:00:00-0500", datetime(2027, 1, 31, 15, tzinfo=UTC)),
    ("2027-01-31T10:00", "no time zone"),
    ("2027-01-31 10:00:00", "no time zone"),
    ("2027-01-31", "a date-time is required"),
    ("9999-01-01T00:00:00Z", "out of range"),
    ("1970-01-01T00:00:00Z", "out of range"),
    ("2027-02-30T10:00:00Z", "not an ISO 8601"),
    ("tomorrow", "a date-time is required"),
    (datetime(2027, 1, 31, 10), "no time zone"),
]


@pytest.mark.parametrize(("value", "expected"), TIME_TABLE)
def test_times_need_a_zone_and_a_sane_year(value: Any, expected: Any) -> None:
    if isinstance(expected, datetime):
        assert rules.parse_time(value, "start") == expected
    else:
        with pytest.raises(InvalidInput, match=expected):
            rules.parse_time(value, "start")

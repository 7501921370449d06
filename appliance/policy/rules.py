"""The policy's rules as pure functions: no database, no clock, no I/O.

Each check raises `RuleViolation` (a well-formed request the policy refuses) or `InvalidInput`
(a malformed value) with a message that says what is wrong and, for roles, which roles are
allowed. The registry calls these before it writes anything; the tests table-test them.

Time arithmetic: UTC throughout. "3 calendar months" keeps the time of day and clamps to the last
day of a shorter month (30 Nov -> 28/29 Feb, 31 Aug -> 30 Nov). An urgent grant lapses exactly
72 hours after its start unless ratified strictly before then.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from appliance.policy import InvalidInput, RuleViolation
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    EventKind,
    Officer,
    Rank,
    Role,
)
from appliance.policy.values import (  # re-exported: callers check values through rules
    MAX_RETENTION_DAYS as MAX_RETENTION_DAYS,
)
from appliance.policy.values import (
    MAX_YEAR as MAX_YEAR,
)
from appliance.policy.values import (
    MIN_YEAR as MIN_YEAR,
)
from appliance.policy.values import (
    PRINCIPAL_RE as PRINCIPAL_RE,
)
from appliance.policy.values import (
    REF_RE as REF_RE,
)
from appliance.policy.values import (
    check_instant as check_instant,
)
from appliance.policy.values import (
    check_principal as check_principal,
)
from appliance.policy.values import (
    check_ref as check_ref,
)
from appliance.policy.values import (
    check_retention as check_retention,
)
from appliance.policy.values import (
    parse_case_type as parse_case_type,
)
from appliance.policy.values import (
    parse_channels as parse_channels,
)
from appliance.policy.values import (
    parse_purposes as parse_purposes,
)
from appliance.policy.values import (
    parse_rank as parse_rank,
)
from appliance.policy.values import (
    parse_role as parse_role,
)
from appliance.policy.values import (
    parse_time as parse_time,
)
from appliance.policy.values import (
    parse_yes_no as parse_yes_no,
)
from appliance.policy.values import (
    require_text as require_text,
)
from store.clock import format_utc

STANDARD_MONTHS = 3
RENEWAL_MONTHS = 3
REVIEW_MONTHS = 1
URGENT_WINDOW = timedelta(hours=72)
EXPIRY_WARNING = timedelta(days=7)
START_SKEW = timedelta(seconds=60)
"""A start this far in the past still counts as now (clock skew between typing and running)."""
DEFAULT_RENEWAL_WINDOW_DAYS = 30
"""`[policy] renewal_window_days`: a renewal is accepted only this close to the current expiry."""
URGENT_COOL_OFF = URGENT_WINDOW
"""After an unratified urgent grant ends (lapse or cancellation), this long must pass before the
same subject can be the subject of another urgent grant: urgent grants do not chain."""
ALLOWED_ROLES: dict[CaseType, tuple[Role, ...]] = {
    CaseType.CRIMINAL: (Role.HEAD_OF_PROFESSIONAL_STANDARDS, Role.ACU_INSPECTOR),
    CaseType.OFFICER_MISCONDUCT: (Role.HEAD_OF_PROFESSIONAL_STANDARDS, Role.ACU_INSPECTOR),
    CaseType.STAFF_DISCIPLINE: (Role.DIRECTOR_OF_HR, Role.HEAD_OF_PERSONNEL_SERVICES),
}
URGENT_MIN_RANK = Rank.INSPECTOR

# Which ranks can hold the four named roles (checked when an officer is registered). The two
# police roles are held by warranted officers: the Inspector in charge of the Anti-Corruption Unit
# is an inspector or above, the Head of Professional Standards a chief inspector or above. The two
# HR roles are police staff posts, which a senior officer (inspector or above) may also fill.
ROLE_MIN_RANK: dict[Role, Rank] = {
    Role.HEAD_OF_PROFESSIONAL_STANDARDS: Rank.CHIEF_INSPECTOR,
    Role.ACU_INSPECTOR: Rank.INSPECTOR,
}
STAFF_ROLES: tuple[Role, ...] = (Role.DIRECTOR_OF_HR, Role.HEAD_OF_PERSONNEL_SERVICES)


# -- time arithmetic ---------------------------------------------------------------------------
def add_months(when: datetime, months: int) -> datetime:
    """`when` plus whole calendar months, same time of day, clamped to the month's last day."""
    index = when.year * 12 + (when.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def standard_expiry(start: datetime) -> datetime:
    return add_months(start, STANDARD_MONTHS)


def urgent_expiry(start: datetime) -> datetime:
    return start + URGENT_WINDOW


def utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput(f"time {value.isoformat()} has no time zone")
    return value.astimezone(UTC)


def resolve_start(requested: datetime | None, now: datetime) -> datetime:
    """Default start is now; a start in the past is refused (within START_SKEW counts as now)."""
    if requested is None:
        return now
    if requested < now - START_SKEW:
        raise RuleViolation(
            f"start {format_utc(requested)} is in the past (now {format_utc(now)}); an "
            "authorisation cannot cover what already happened"
        )
    return max(requested, now)


# -- who may authorise -------------------------------------------------------------------------
def role_fits(case_type: CaseType, role: str) -> bool:
    return role in ALLOWED_ROLES[case_type]


def check_officer_role(case_type: CaseType, role: str, action: str = "authorise") -> None:
    if not role_fits(case_type, role):
        allowed = " or ".join(r.value for r in ALLOWED_ROLES[case_type])
        raise RuleViolation(
            f"officer role {role!r} cannot {action} a {case_type.value} case; allowed roles: "
            f"{allowed}"
        )


def check_officer_standing(role: str, rank: Rank) -> None:
    """Refuse a role and rank that cannot go together (checked when an officer is registered).

    Any role name other than the four named ones is accepted with any rank (such an officer can
    make urgent grants only, by rank)."""
    if role in ROLE_MIN_RANK:
        minimum = ROLE_MIN_RANK[Role(role)]
        if rank is Rank.STAFF or rank.level < minimum.level:
            raise RuleViolation(
                f"role {role} is held by a police officer of rank {minimum.value} or above; "
                f"rank {rank.value} cannot hold it"
            )
    elif role in STAFF_ROLES and rank is not Rank.STAFF and rank.level < Rank.INSPECTOR.level:
        raise RuleViolation(
            f"role {role} is a police staff post (rank staff) or held by an officer of rank "
            f"{Rank.INSPECTOR.value} or above; rank {rank.value} cannot hold it"
        )


def check_urgent_rank(rank: Rank) -> None:
    if rank.level < URGENT_MIN_RANK.level:
        raise RuleViolation(
            f"urgent authorisation needs an officer of rank {URGENT_MIN_RANK.value} or above; "
            f"{rank.value} is below"
        )


def check_not_self(subject: str, officer: Officer) -> None:
    if officer.principal == subject:
        raise RuleViolation(
            f"officer {officer.principal} is the subject: an officer cannot authorise "
            "monitoring of themselves"
        )


def check_not_subject(
    auth: Authorisation | Application, principal: str | None, action: str
) -> None:
    """The subject of an authorisation can never act on it, whatever role they claim."""
    if principal is not None and principal == auth.subject:
        raise RuleViolation(
            f"{principal} is the subject of {auth.ref} and cannot {action} it (the subject of an "
            "authorisation never acts on it)"
        )


def check_assign(auth: Authorisation | Application, investigator_principal: str) -> None:
    """An investigator is never the subject, nor the officer who authorised the monitoring
    (whoever authorises stays independent of the investigation)."""
    check_not_subject(auth, investigator_principal, "be assigned to")
    officer = auth.officer if isinstance(auth, Application) else auth.application.officer
    if investigator_principal == officer.principal:
        raise RuleViolation(
            f"{investigator_principal} authorised {auth.ref} and cannot also be assigned to "
            "investigate under it"
        )


def check_urgent_chain(subject_auths: Sequence[Authorisation], at: datetime) -> None:
    """Urgent grants do not chain: while the subject has an unratified urgent grant in force, or
    one that ended unratified (lapsed or cancelled) less than 72 hours ago, a new urgent grant is
    refused; only ratification by an officer of the right role extends urgent monitoring."""
    for auth in subject_auths:
        if not auth.urgent or auth.ratified_at is not None:
            continue
        ended = min(auth.expiry, auth.cancelled_at or auth.expiry)
        if at < ended:
            raise RuleViolation(
                f"{auth.subject} already has the urgent authorisation {auth.ref} awaiting "
                f"ratification (until {format_utc(ended)}); urgent grants do not chain: have it "
                "ratified by an officer of the right role instead"
            )
        if at < ended + URGENT_COOL_OFF:
            raise RuleViolation(
                f"{auth.subject}'s urgent authorisation {auth.ref} ended unratified at "
                f"{format_utc(ended)}; urgent grants do not chain: a new urgent grant for the same "
                f"subject is possible from {format_utc(ended + URGENT_COOL_OFF)}, or make a "
                "standard application"
            )


def check_application(app: Application) -> None:
    """The grant rules that do not need the registry (which checks references, investigators)."""
    check_not_self(app.subject, app.officer)
    if app.urgent:
        check_urgent_rank(app.officer.rank)
    else:
        check_officer_role(app.case_type, app.officer.role)
    if not app.ripa_considered and not app.ripa_note:
        raise RuleViolation("RIPA considered is 'no': a RIPA note saying why is required")


def initial_expiry(app: Application) -> datetime:
    return urgent_expiry(app.start) if app.urgent else standard_expiry(app.start)


# -- changes to an authorisation ---------------------------------------------------------------
def _not_cancelled(auth: Authorisation, at: datetime, action: str) -> None:
    cancelled = auth.cancelled_at
    if cancelled is not None:
        raise RuleViolation(
            f"{auth.ref} was cancelled at {format_utc(cancelled)}; it cannot be {action}"
        )


def check_ratify(auth: Authorisation, officer: Officer, at: datetime) -> datetime:
    """Ratify an urgent grant; returns the new expiry (3 months after the original start)."""
    if not auth.urgent:
        raise RuleViolation(f"{auth.ref} is not an urgent authorisation; nothing to ratify")
    if auth.ratified_at is not None:
        raise RuleViolation(f"{auth.ref} was ratified already at {format_utc(auth.ratified_at)}")
    _not_cancelled(auth, at, "ratified")
    deadline = urgent_expiry(auth.start)
    if at >= deadline:
        raise RuleViolation(
            f"{auth.ref}: ratification at {format_utc(at)} is too late; the urgent authorisation "
            f"lapsed at {format_utc(deadline)} (72 hours after its start)"
        )
    check_not_subject(auth, officer.principal, "ratify")
    granted_by = auth.application.officer.principal
    if officer.principal == granted_by:
        raise RuleViolation(
            f"{officer.principal} gave the urgent authorisation {auth.ref} and cannot ratify it: "
            "a different officer of the right role must properly authorise it"
        )
    check_officer_role(auth.case_type, officer.role, "ratify")
    return standard_expiry(auth.start)


def _expiry_before_last_renewal(auth: Authorisation) -> datetime | None:
    """When the latest expiry-setting event is a renewal, the expiry it extended."""
    setting = [e for e in auth.history if e.expiry is not None]
    if len(setting) < 2 or setting[-1].kind is not EventKind.RENEW:
        return None
    return setting[-2].expiry


def check_renew(
    auth: Authorisation,
    officer: Officer,
    results: str,
    at: datetime,
    *,
    window_days: int = DEFAULT_RENEWAL_WINDOW_DAYS,
) -> datetime:
    """Renew within `window_days` before expiry, once per period, with a results update, by an
    officer whose role fits the case type; returns the current expiry + 3 months."""
    _not_cancelled(auth, at, "renewed")
    check_not_subject(auth, officer.principal, "renew")
    check_not_self(auth.subject, officer)
    check_officer_role(auth.case_type, officer.role, "renew")
    if auth.awaiting_ratification:
        raise RuleViolation(
            f"{auth.ref} is an urgent authorisation awaiting ratification; ratify it before "
            "renewing"
        )
    if at >= auth.expiry:
        raise RuleViolation(
            f"{auth.ref} expired at {format_utc(auth.expiry)}; renewal is possible only before "
            "expiry (make a new application)"
        )
    previous = _expiry_before_last_renewal(auth)
    if previous is not None and at < previous:
        raise RuleViolation(
            f"{auth.ref} was renewed already in this period (to {format_utc(auth.expiry)}); "
            "renewals do not stack"
        )
    opens = auth.expiry - timedelta(days=window_days)
    if at < opens:
        raise RuleViolation(
            f"{auth.ref}: renewal is accepted only within {window_days} days before its expiry "
            f"({format_utc(auth.expiry)}), i.e. from {format_utc(opens)}"
        )
    require_text(results, "the results update")
    return add_months(auth.expiry, RENEWAL_MONTHS)


def check_review(auth: Authorisation, officer: Officer, note: str, at: datetime) -> None:
    """A review is an act of an officer whose role fits the case type, never the subject."""
    _not_cancelled(auth, at, "reviewed")
    if at >= auth.expiry:
        raise RuleViolation(f"{auth.ref} expired at {format_utc(auth.expiry)}; nothing to review")
    check_not_subject(auth, officer.principal, "review")
    check_officer_role(auth.case_type, officer.role, "review")
    require_text(note, "the review note")


def check_cancel(
    auth: Authorisation, reason: str, at: datetime, *, actor_principal: str | None = None
) -> None:
    """Cancellation is immediate and open to the audit officer, any registered officer and an
    assigned investigator (the caller establishes who acts); never to the subject."""
    check_not_subject(auth, actor_principal, "cancel")
    _not_cancelled(auth, at, "cancelled again")
    require_text(reason, "the cancellation reason")


# -- reviews and warnings ----------------------------------------------------------------------
def next_review(auth: Authorisation) -> datetime:
    base = auth.last_review_at or auth.start
    return add_months(max(base, auth.start), REVIEW_MONTHS)


def review_due(auth: Authorisation, at: datetime) -> bool:
    """A month has passed since the start or the last review, and it is still in force."""
    if auth.state(at) not in ("active", "awaiting_ratification"):
        return False
    return at >= next_review(auth)


def warnings(auth: Authorisation, at: datetime) -> tuple[str, ...]:
    """Flags for `lbm auth list`: review_due, expiring_soon, awaiting_ratification."""
    flags: list[str] = []
    state = auth.state(at)
    live = state in ("active", "awaiting_ratification", "pending")
    if review_due(auth, at):
        flags.append("review_due")
    if live and auth.expiry - at <= EXPIRY_WARNING:
        flags.append("expiring_soon")
    if live and auth.awaiting_ratification:
        flags.append("awaiting_ratification")
    return tuple(flags)

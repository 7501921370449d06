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
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from appliance.policy import InvalidInput, RuleViolation
from appliance.policy.model import (
    Application,
    Authorisation,
    CaseType,
    Channel,
    Officer,
    Purpose,
    Rank,
    Role,
)
from store.clock import format_utc, parse_utc

E = TypeVar("E", bound=StrEnum)

STANDARD_MONTHS = 3
RENEWAL_MONTHS = 3
REVIEW_MONTHS = 1
URGENT_WINDOW = timedelta(hours=72)
EXPIRY_WARNING = timedelta(days=7)
START_SKEW = timedelta(seconds=60)
"""A start this far in the past still counts as now (clock skew between typing and running)."""

# A reference names directories (archive/REF/, keystore/REF/) and prefixes record ids
# (REF/SEGMENT/N), so it has no '/', no leading dot, no '..' and no whitespace; at most 64
# characters.
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRINCIPAL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

ALLOWED_ROLES: dict[CaseType, tuple[Role, ...]] = {
    CaseType.CRIMINAL: (Role.HEAD_OF_PROFESSIONAL_STANDARDS, Role.ACU_INSPECTOR),
    CaseType.OFFICER_MISCONDUCT: (Role.HEAD_OF_PROFESSIONAL_STANDARDS, Role.ACU_INSPECTOR),
    CaseType.STAFF_DISCIPLINE: (Role.DIRECTOR_OF_HR, Role.HEAD_OF_PERSONNEL_SERVICES),
}
URGENT_MIN_RANK = Rank.INSPECTOR


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


# -- single-value checks -----------------------------------------------------------------------
def _choices(enum: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in enum)


def check_ref(ref: str) -> str:
    if not isinstance(ref, str) or not REF_RE.fullmatch(ref) or ".." in ref:
        raise InvalidInput(
            f"reference {ref!r}: must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' (e.g. CA1-2026-0042)"
        )
    return ref


def check_principal(value: str, what: str) -> str:
    if not isinstance(value, str) or not PRINCIPAL_RE.fullmatch(value):
        raise InvalidInput(f"{what} {value!r}: a principal id must match [a-z0-9][a-z0-9._-]*")
    return value


def parse_case_type(value: str) -> CaseType:
    try:
        return CaseType(value)
    except ValueError:
        raise InvalidInput(f"case type {value!r}: must be one of {_choices(CaseType)}") from None


def _parse_members(enum: type[E], values: Iterable[str], what: str) -> tuple[E, ...]:
    """Members of `enum` named by `values`, in order, without repeats; at least one."""
    out: list[E] = []
    for value in values:
        try:
            member = enum(value)
        except ValueError:
            raise InvalidInput(f"{what} {value!r}: must be one of {_choices(enum)}") from None
        if member not in out:
            out.append(member)
    if not out:
        raise InvalidInput(f"at least one {what} is required ({_choices(enum)})")
    return tuple(out)


def parse_purposes(values: Iterable[str]) -> tuple[Purpose, ...]:
    return _parse_members(Purpose, values, "purpose")


def parse_channels(values: Iterable[str]) -> tuple[Channel, ...]:
    return _parse_members(Channel, values, "channel")


def parse_rank(value: str) -> Rank:
    try:
        return Rank(value)
    except ValueError:
        raise InvalidInput(f"rank {value!r}: must be one of {_choices(Rank)}") from None


def parse_role(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        raise InvalidInput(
            f"role {value!r}: must be a lower-case name like {Role.ACU_INSPECTOR.value}"
        )
    return value


def parse_yes_no(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "y", "true"):
        return True
    if text in ("no", "n", "false"):
        return False
    raise InvalidInput(f"{what} {value!r}: must be yes or no")


def parse_time(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    try:
        return parse_utc(str(value))
    except ValueError:
        raise InvalidInput(f"{what} {value!r}: not an ISO 8601 date-time") from None


def require_text(value: Any, what: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise RuleViolation(f"{what} must not be empty")
    return text


def check_retention(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"retention days {value!r}: must be a whole number of days")
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"retention days {value!r}: must be a whole number of days") from None
    if days <= 0:
        raise InvalidInput(f"retention days {days}: must be greater than 0")
    return days


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
    check_not_self(auth.subject, officer)
    check_officer_role(auth.case_type, officer.role, "ratify")
    return standard_expiry(auth.start)


def check_renew(auth: Authorisation, officer: Officer, results: str, at: datetime) -> datetime:
    """Renew before expiry with a results update; returns current expiry + 3 months."""
    _not_cancelled(auth, at, "renewed")
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
    require_text(results, "the results update")
    check_not_self(auth.subject, officer)
    check_officer_role(auth.case_type, officer.role, "renew")
    return add_months(auth.expiry, RENEWAL_MONTHS)


def check_review(auth: Authorisation, reviewer: str, note: str, at: datetime) -> None:
    _not_cancelled(auth, at, "reviewed")
    if at >= auth.expiry:
        raise RuleViolation(f"{auth.ref} expired at {format_utc(auth.expiry)}; nothing to review")
    if reviewer == auth.subject:
        raise RuleViolation(f"{reviewer} is the subject of {auth.ref} and cannot review it")
    require_text(note, "the review note")


def check_cancel(auth: Authorisation, reason: str, at: datetime) -> None:
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


# -- applications from the command line or a file -----------------------------------------------
FIELDS = (
    "ref",
    "subject",
    "case_type",
    "purpose",
    "channel",
    "officer",
    "officer_name",
    "officer_role",
    "officer_rank",
    "necessity",
    "proportionality",
    "collateral",
    "ripa_considered",
    "ripa_note",
    "start",
    "investigator",
    "open_do_not_decrypt",
    "retention_days",
)
OPTIONAL = ("ripa_note", "start", "open_do_not_decrypt", "retention_days")
REQUIRED = tuple(f for f in FIELDS if f not in OPTIONAL)
_PLURALS = {"purposes": "purpose", "channels": "channel", "investigators": "investigator"}


def normalise_fields(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Map `case-type`/`case_type`/`purposes`... to FIELDS names; unknown keys are refused."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        name = _PLURALS.get(name, name)
        if name not in FIELDS:
            raise InvalidInput(f"{where}{key}: unknown field (known: {', '.join(FIELDS)})")
        out[name] = value
    return out


def split_multi(value: Any) -> list[str]:
    """A repeated option, a TOML list, or a comma list: flattened, blanks dropped."""
    items: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


def build_application(
    fields: Mapping[str, Any], *, urgent: bool, now: datetime, where: str = ""
) -> Application:
    """Validate raw fields (strings, lists, TOML values) into an `Application`, rules included."""
    missing = [f for f in REQUIRED if fields.get(f) in (None, "", [], ())]
    if missing:
        names = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise InvalidInput(f"{where}missing required field(s): {names}")
    try:
        officer = Officer(
            principal=check_principal(str(fields["officer"]), "officer"),
            name=require_text(fields["officer_name"], "the officer's name"),
            role=parse_role(str(fields["officer_role"])),
            rank=parse_rank(str(fields["officer_rank"])),
        )
        start_raw = fields.get("start")
        start = None if start_raw in (None, "") else parse_time(start_raw, "start")
        investigators = tuple(
            dict.fromkeys(
                check_principal(n, "investigator") for n in split_multi(fields["investigator"])
            )
        )
        app = Application(
            ref=check_ref(str(fields["ref"])),
            subject=check_principal(str(fields["subject"]), "subject"),
            case_type=parse_case_type(str(fields["case_type"])),
            purposes=parse_purposes(split_multi(fields["purpose"])),
            channels=parse_channels(split_multi(fields["channel"])),
            officer=officer,
            necessity=require_text(fields["necessity"], "the necessity statement"),
            proportionality=require_text(
                fields["proportionality"], "the proportionality statement"
            ),
            collateral=require_text(fields["collateral"], "the collateral intrusion statement"),
            ripa_considered=parse_yes_no(fields["ripa_considered"], "RIPA considered"),
            ripa_note=str(fields.get("ripa_note") or "").strip(),
            start=resolve_start(start, now),
            investigators=investigators,
            urgent=urgent,
            open_do_not_decrypt=parse_yes_no(
                fields.get("open_do_not_decrypt") or False, "open do-not-decrypt"
            ),
            retention_days=check_retention(fields.get("retention_days")),
        )
        check_application(app)
    except (InvalidInput, RuleViolation) as exc:
        if where:
            raise type(exc)(f"{where}{exc}") from None
        raise
    return app

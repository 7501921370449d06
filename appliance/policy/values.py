"""Single input values of the policy: references, principals, closed-list names, instants,
statements and retention, each checked and parsed into its typed form.

Every check raises `InvalidInput` (a malformed value) or `RuleViolation` (an empty statement) with
a message naming the value and what is expected. Identifiers are matched whole (`fullmatch`), so a
trailing newline is refused; instants need `Z` or an offset and lie within MIN_YEAR..MAX_YEAR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from appliance.policy import InvalidInput, RuleViolation
from appliance.policy.model import CaseType, Channel, Purpose, Rank, Role
from store.clock import format_utc, parse_utc

E = TypeVar("E", bound=StrEnum)

MIN_YEAR, MAX_YEAR = 2000, 2100
"""Instants outside these years are refused as input (typing errors, date arithmetic overflow)."""
MAX_RETENTION_DAYS = 36525
"""100 years: the longest retention an authorisation may ask for."""

# A reference names directories (archive/REF/, keystore/REF/) and prefixes record ids
# (REF/SEGMENT/N), so it has no '/', no leading dot, no '..' and no whitespace; at most 64
# characters.
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRINCIPAL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def check_instant(value: datetime, what: str) -> datetime:
    """A UTC instant with a time zone, within MIN_YEAR..MAX_YEAR."""
    if value.tzinfo is None:
        raise InvalidInput(
            f"{what} {value.isoformat()}: no time zone; `Z` or an offset are required "
            "(e.g. 2027-01-31T10:00:00Z)"
        )
    value = value.astimezone(UTC)
    if not MIN_YEAR <= value.year < MAX_YEAR:
        raise InvalidInput(
            f"{what} {format_utc(value)}: out of range (years {MIN_YEAR}-{MAX_YEAR - 1})"
        )
    return value


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


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d")
_TZ_SUFFIX = re.compile(r".*(?:[Zz]|[+-]\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d+)?)?)?)")


def parse_time(value: Any, what: str) -> datetime:
    """An ISO 8601 instant with `Z` or an offset (a naive time is refused, never guessed), in
    range. A TOML offset date-time arrives as a datetime, a local one as a naive datetime."""
    if isinstance(value, datetime):
        return check_instant(value, what)
    text = str(value).strip()
    if not _DATE_TIME.match(text):
        raise InvalidInput(
            f"{what} {value!r}: a date-time is required (e.g. 2027-01-31T10:00:00Z), not a date"
        )
    if not _TZ_SUFFIX.fullmatch(text):
        raise InvalidInput(
            f"{what} {value!r}: no time zone; `Z` or an offset are required "
            "(e.g. 2027-01-31T10:00:00Z or 2027-01-31T10:00:00+01:00)"
        )
    try:
        parsed = parse_utc(text)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{what} {value!r}: not an ISO 8601 date-time") from None
    return check_instant(parsed, what)


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
    if days > MAX_RETENTION_DAYS:
        raise InvalidInput(
            f"retention days {days}: at most {MAX_RETENTION_DAYS} (100 years); evidence kept "
            "longer is put on evidence hold instead"
        )
    return days

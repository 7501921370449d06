"""The policy's vocabulary and its immutable records.

Names and values are fixed by DECISIONS.md ("Names and shapes everyone shares"): case types,
purposes, channels, roles and ranks are plain lower-case strings on the wire, in the registry and
in JSON output. An `Authorisation` is its application (as granted) plus its append-only history;
every derived fact (effective expiry, ratification, cancellation, assignees) is computed from that
history, so an answer about an instant in the past is the answer that held then.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from store.clock import format_utc


class CaseType(StrEnum):
    CRIMINAL = "criminal"
    OFFICER_MISCONDUCT = "officer_misconduct"
    STAFF_DISCIPLINE = "staff_discipline"


class Purpose(StrEnum):
    """The closed list of lawful purposes of a monitoring activity."""

    ESTABLISHING_FACTS = "establishing_facts"
    COMPLIANCE = "compliance"
    STANDARDS = "standards"
    NATIONAL_SECURITY = "national_security"
    PREVENTING_OR_DETECTING_CRIME = "preventing_or_detecting_crime"
    UNAUTHORISED_USE = "unauthorised_use"
    SYSTEM_OPERATION = "system_operation"


class Channel(StrEnum):
    WEB = "web"
    EMAIL = "email"
    PACKETS = "packets"


class Role(StrEnum):
    """The roles that can grant standard authorisations. Any other role name is allowed for an
    officer, who can then make urgent grants only (by rank)."""

    HEAD_OF_PROFESSIONAL_STANDARDS = "head_of_professional_standards"
    ACU_INSPECTOR = "acu_inspector"
    DIRECTOR_OF_HR = "director_of_hr"
    HEAD_OF_PERSONNEL_SERVICES = "head_of_personnel_services"


class Rank(StrEnum):
    """Ranks in ascending order; police staff (`staff`) rank below inspector."""

    STAFF = "staff"
    CONSTABLE = "constable"
    SERGEANT = "sergeant"
    INSPECTOR = "inspector"
    CHIEF_INSPECTOR = "chief_inspector"
    SUPERINTENDENT = "superintendent"
    CHIEF_SUPERINTENDENT = "chief_superintendent"
    ASSISTANT_CHIEF_CONSTABLE = "assistant_chief_constable"
    DEPUTY_CHIEF_CONSTABLE = "deputy_chief_constable"
    CHIEF_CONSTABLE = "chief_constable"

    @property
    def level(self) -> int:
        return list(Rank).index(self)


class EventKind(StrEnum):
    """What a history row records."""

    GRANT = "grant"
    URGENT = "urgent"
    RATIFY = "ratify"
    RENEW = "renew"
    REVIEW = "review"
    CANCEL = "cancel"
    ASSIGN = "assign"
    REWRAP = "rewrap"


@dataclass(frozen=True)
class Officer:
    """An officer acting on an authorisation. `principal` is the force's staff id, so that
    self-authorisation is caught by id; `role` is free text beyond the four named roles."""

    principal: str
    name: str
    role: str
    rank: Rank

    def as_dict(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "name": self.name,
            "role": self.role,
            "rank": self.rank.value,
        }


@dataclass(frozen=True)
class OfficerPeriod:
    """One period of an officer in the officer register: who held which role at which rank,
    from when until when (`valid_to` None: open), and the SSH public key their statements are
    signed with. A new registration of the same principal starts a new period; the register
    itself is append-only, so every past period stays readable."""

    principal: str
    name: str
    role: str
    rank: Rank
    valid_from: datetime
    valid_to: datetime | None
    ssh_key: str | None
    registered_at: datetime
    seq: int

    @property
    def officer(self) -> Officer:
        return Officer(self.principal, self.name, self.role, self.rank)

    def valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)

    def as_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "name": self.name,
            "role": self.role,
            "rank": self.rank.value,
            "valid_from": format_utc(self.valid_from),
            "valid_to": format_utc(self.valid_to) if self.valid_to else None,
            "ssh_key": self.ssh_key,
            "registered_at": format_utc(self.registered_at),
        }


@dataclass(frozen=True)
class Application:
    """A validated grant (standard or urgent), before the registry records it."""

    ref: str
    subject: str
    case_type: CaseType
    purposes: tuple[Purpose, ...]
    channels: tuple[Channel, ...]
    officer: Officer
    necessity: str
    proportionality: str
    collateral: str
    ripa_considered: bool
    ripa_note: str
    start: datetime
    investigators: tuple[str, ...]
    urgent: bool = False
    open_do_not_decrypt: bool = False
    retention_days: int | None = None


@dataclass(frozen=True)
class HistoryEvent:
    """One append-only history row. `expiry` is the effective expiry after this event, when the
    event sets one (grant, urgent, ratify, renew); `text` is the reason, note or results update."""

    seq: int
    ref: str
    kind: EventKind
    at: datetime
    actor: str
    officer: Officer | None = None
    text: str = ""
    expiry: datetime | None = None
    investigators: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ref": self.ref,
            "kind": self.kind.value,
            "at": format_utc(self.at),
            "actor": self.actor,
            "officer": self.officer.as_dict() if self.officer else None,
            "text": self.text,
            "expiry": format_utc(self.expiry) if self.expiry else None,
            "investigators": list(self.investigators),
        }


@dataclass(frozen=True)
class Authorisation:
    """An authorisation as granted plus its history (oldest first)."""

    application: Application
    public_key: str
    created_at: datetime
    history: tuple[HistoryEvent, ...] = field(default=())

    # -- the application's fields, for convenience ----------------------------------------
    @property
    def ref(self) -> str:
        return self.application.ref

    @property
    def subject(self) -> str:
        return self.application.subject

    @property
    def case_type(self) -> CaseType:
        return self.application.case_type

    @property
    def channels(self) -> tuple[Channel, ...]:
        return self.application.channels

    @property
    def start(self) -> datetime:
        return self.application.start

    @property
    def urgent(self) -> bool:
        """Granted as urgent (it stays so in the record after ratification)."""
        return self.application.urgent

    @property
    def open_do_not_decrypt(self) -> bool:
        return self.application.open_do_not_decrypt

    def appended(self, event: HistoryEvent) -> Authorisation:
        """A copy with `event` added to the history (the registry persists the same event)."""
        return replace(self, history=(*self.history, event))

    # -- derived from history --------------------------------------------------------------
    def _first(self, kind: EventKind) -> HistoryEvent | None:
        return next((e for e in self.history if e.kind is kind), None)

    @property
    def ratified_at(self) -> datetime | None:
        event = self._first(EventKind.RATIFY)
        return event.at if event else None

    @property
    def cancelled_at(self) -> datetime | None:
        event = self._first(EventKind.CANCEL)
        return event.at if event else None

    @property
    def cancel_reason(self) -> str | None:
        event = self._first(EventKind.CANCEL)
        return event.text if event else None

    @property
    def awaiting_ratification(self) -> bool:
        """Urgent, not (yet) ratified and not cancelled; it may also have lapsed already."""
        return self.urgent and self.ratified_at is None and self.cancelled_at is None

    @property
    def expiry(self) -> datetime:
        """The effective expiry: the one set by the latest grant, ratification or renewal."""
        for event in reversed(self.history):
            if event.expiry is not None:
                return event.expiry
        raise ValueError(f"authorisation {self.ref}: history has no expiry")

    @property
    def renewals(self) -> int:
        return sum(1 for e in self.history if e.kind is EventKind.RENEW)

    @property
    def last_review_at(self) -> datetime | None:
        reviews = [e.at for e in self.history if e.kind is EventKind.REVIEW]
        return reviews[-1] if reviews else None

    @property
    def assignees(self) -> tuple[str, ...]:
        """Investigators assigned: those named at grant plus later assignments, in order."""
        names = list(self.application.investigators)
        for event in self.history:
            if event.kind is EventKind.ASSIGN:
                names.extend(n for n in event.investigators if n not in names)
        return tuple(names)

    @property
    def wrapped_to(self) -> tuple[str, ...]:
        """Investigators the authorisation key was last wrapped to (at grant or last rewrap)."""
        names = self.application.investigators
        for event in self.history:
            if event.kind is EventKind.REWRAP:
                names = event.investigators
        return tuple(names)

    def active_at(self, at: datetime) -> bool:
        """True when the authorisation allows full capture at `at`: started, before its
        effective expiry, and not cancelled at or before `at`."""
        if at < self.start or at >= self.expiry:
            return False
        cancelled = self.cancelled_at
        return cancelled is None or at < cancelled

    def ended_at(self) -> datetime:
        """When it stops (or stopped) allowing capture: expiry or cancellation, the earlier."""
        cancelled = self.cancelled_at
        if cancelled is not None:
            return min(max(cancelled, self.start), self.expiry)
        return self.expiry

    def state(self, at: datetime) -> str:
        """`pending`, `active`, `awaiting_ratification`, `cancelled` or `expired` at `at`."""
        cancelled = self.cancelled_at
        if cancelled is not None and at >= cancelled:
            return "cancelled"
        if at >= self.expiry:
            return "expired"
        if at < self.start:
            return "pending"
        return "awaiting_ratification" if self.awaiting_ratification else "active"


@dataclass(frozen=True)
class Decision:
    """What a channel does with a principal's traffic at an instant.

    `refs` lists every active authorisation covering the principal, channel and instant (minus
    those that do not open a do-not-decrypt server); `full` is `bool(refs)`. `do_not_decrypt`
    says the server matched the do-not-decrypt list (so it is passed through unless a listed
    authorisation opens it).
    """

    full: bool
    refs: tuple[str, ...]
    principal: str | None
    channel: Channel
    at: datetime
    do_not_decrypt: bool = False

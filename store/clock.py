"""The one clock of the appliance: UTC, injectable, and movable in tests.

`LBM_FAKE_NOW=ISO8601` is honoured only when the caller says the configuration allows it
(`[testing] fake_clock = true`), so a stray environment variable cannot move a production
gateway's clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime

FAKE_NOW_ENV = "LBM_FAKE_NOW"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:61] + "...")


def parse_utc(text: str) -> datetime:
    """Parse an ISO 8601 instant with `Z` or an offset, as UTC. A value without a time zone is
    refused (whose local time would it be?). Raises ValueError with a one-line reason."""
    raw = text.strip()
    if raw.endswith("Z") or raw.endswith("z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time: {_shown(text)}") from None
    if value.tzinfo is None:
        raise ValueError(
            f"{_shown(text)} has no time zone: `Z` or an offset are required "
            "(e.g. 2027-01-31T10:00:00Z)"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{_shown(text)} is out of range") from None


def format_utc(value: datetime) -> str:
    """ISO 8601 with a trailing Z, microseconds only when present."""
    value = value.astimezone(UTC)
    text = value.isoformat()
    return text.replace("+00:00", "Z")


class Clock:
    """A UTC clock. `fixed` pins it; `allow_fake` lets LBM_FAKE_NOW pin it."""

    def __init__(
        self,
        *,
        allow_fake: bool = False,
        fixed: datetime | None = None,
        source: Callable[[], datetime] | None = None,
    ) -> None:
        self._fixed = fixed
        self._source = source
        self.allow_fake = allow_fake

    @property
    def is_fake(self) -> bool:
        """True when the time may not be the real one: pinned, injected, or movable through
        LBM_FAKE_NOW because the configuration allows it (set or not), so every audit entry
        written while the fake clock is allowed is flagged."""
        return self._fixed is not None or self._source is not None or self.allow_fake

    def now(self) -> datetime:
        if self._fixed is not None:
            return self._fixed
        if self._source is not None:
            return self._source().astimezone(UTC)
        if self.allow_fake:
            fake = os.environ.get(FAKE_NOW_ENV)
            if fake:
                return parse_utc(fake)
        return datetime.now(UTC)

    def set(self, value: datetime) -> None:
        """Pin the clock (tests)."""
        self._fixed = value.astimezone(UTC)


def system_clock() -> Clock:
    return Clock()

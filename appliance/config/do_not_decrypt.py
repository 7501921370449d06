"""The do-not-decrypt categories: services users must be able to reach privately even while
monitored, shipped as defaults of `[do_not_decrypt] categories` (CATEGORY:GLOB), applied together
with the flat `[do_not_decrypt] hosts` list."""

from __future__ import annotations

import re
from typing import Any

# Sensitive services users must be able to reach privately even while monitored: passed through
# unopened unless an authorisation says --open-do-not-decrypt (DECISIONS.md, Do-not-decrypt).
DO_NOT_DECRYPT_CATEGORIES = (
    "health:*.nhs.uk",
    "health:*.nhs.net",
    "health:*.nhs.scot",
    "health:*.mind.org.uk",
    "banking:*.barclays.co.uk",
    "banking:*.lloydsbank.co.uk",
    "banking:*.natwest.com",
    "banking:*.hsbc.co.uk",
    "banking:*.santander.co.uk",
    "banking:*.nationwide.co.uk",
    "legal_advice:*.lawsociety.org.uk",
    "legal_advice:*.citizensadvice.org.uk",
    "legal_advice:*.lawcentres.org.uk",
    "trade_union:*.unison.org.uk",
    "trade_union:*.police-federation.org.uk",
    "trade_union:*.polfed.org",
    "trade_union:*.unitetheunion.org",
    "trade_union:*.gmb.org.uk",
    "trade_union:*.pcs.org.uk",
    "welfare:*.samaritans.org",
    "welfare:*.turn2us.org.uk",
    "welfare:*.stepchange.org",
)

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9*?.-]+$")


def check_categories(value: Any) -> str | None:
    for item in value:
        if not _CATEGORY_RE.fullmatch(item):
            return f"{item!r} is not CATEGORY:GLOB (e.g. health:*.nhs.uk)"
    return None


def do_not_decrypt_globs(hosts: list[str], categories: list[str]) -> list[str]:
    """Every do-not-decrypt pattern: the flat list, then the categories' globs."""
    return [*hosts, *(item.partition(":")[2] for item in categories)]

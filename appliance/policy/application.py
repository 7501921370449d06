"""A CA1 application from the command line or a file, validated into an `Application`.

Field names are FIELDS (dashes or underscores, plurals accepted); unknown fields are refused. The
authorising officer is named by principal only: name, role and rank come from the officer
register through `resolve_officer`, never from the application.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from appliance.policy import InvalidInput, RuleViolation, rules
from appliance.policy.model import Application, Officer
from appliance.policy.values import (
    check_principal,
    check_ref,
    check_retention,
    parse_case_type,
    parse_channels,
    parse_purposes,
    parse_time,
    parse_yes_no,
    require_text,
)

FIELDS = (
    "ref",
    "subject",
    "case_type",
    "purpose",
    "channel",
    "officer",
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


OfficerResolver = Callable[[str], Officer]
"""Gives the registered officer (name, role, rank at the act's instant) for a principal, or raises
`RuleViolation` naming what the register says. Officers are facts, never typed in."""


def build_application(
    fields: Mapping[str, Any],
    *,
    urgent: bool,
    now: datetime,
    resolve_officer: OfficerResolver,
    where: str = "",
) -> Application:
    """Validate raw fields (strings, lists, TOML values) into an `Application`, rules included.
    The officer's name, role and rank come from `resolve_officer` (the officer register)."""
    missing = [f for f in REQUIRED if fields.get(f) in (None, "", [], ())]
    if missing:
        names = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise InvalidInput(f"{where}missing required field(s): {names}")
    try:
        officer = resolve_officer(check_principal(str(fields["officer"]), "officer"))
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
            start=rules.resolve_start(start, now),
            investigators=investigators,
            urgent=urgent,
            open_do_not_decrypt=parse_yes_no(
                fields.get("open_do_not_decrypt") or False, "open do-not-decrypt"
            ),
            retention_days=check_retention(fields.get("retention_days")),
        )
        rules.check_application(app)
    except (InvalidInput, RuleViolation) as exc:
        if where:
            raise type(exc)(f"{where}{exc}") from None
        raise
    return app

"""The scrutiny report: counts for a period, from the registry and the audit log. Never content,
never search results, never a subject's or anyone else's identifier: references, enum values,
officer roles, the investigators' stated search reasons, and numbers.

The period is [from, to) in UTC. Sections:

- authorisations in force at some time in the period, by state at the period's end, case type,
  purpose and the granting officer's role; granted in the period per month (standard, urgent);
- urgent grants made in the period: ratified in time (before 72 hours), not ratified (lapsed
  or cancelled first), still awaiting;
- renewals (with a results update), cancellations, reviews done and overdue at the period's end
  (the monthly authorisation review, and the retention review of kept archives);
- from the audit log: capture gaps, searches (by reason, by ref), exports and bundles,
  collateral removals, purges (archives, metadata partitions), refusals (`*_refused`), evidence
  holds and releases, retention runs;
- whether the audit chain verified (`store.audit_verify`).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from appliance.evidence import holds as holds_mod
from appliance.evidence.retention import review_due_refs
from appliance.policy import rules
from appliance.policy.model import Authorisation, EventKind
from appliance.policy.registry_store import load_all
from store.audit import Action
from store.clock import format_utc, parse_utc
from store.paths import DataPaths

GAPS = (Action.CAPTURE_GAP, Action.METADATA_GAP, Action.SEGMENT_TRUNCATED)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    def __contains__(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def as_dict(self) -> dict[str, str]:
        return {"from": format_utc(self.start), "to": format_utc(self.end)}


def parse_instant(text: str, option: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 instant with a zone; ValueError naming `option`."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            return datetime.combine(datetime.fromisoformat(raw).date(), time(), UTC)
        return parse_utc(raw)
    except ValueError as exc:
        raise ValueError(f"{option} {text!r}: {exc} (a date YYYY-MM-DD or ISO 8601)") from None


def parse_period(start: str, end: str) -> Period:
    period = Period(parse_instant(start, "--from"), parse_instant(end, "--to"))
    if period.end <= period.start:
        raise ValueError("--to must be after --from")
    return period


def _month(at: datetime) -> str:
    return f"{at:%Y-%m}"


def _sorted(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items()))


def authorisations(auths: Iterable[Authorisation], period: Period, at: datetime) -> dict[str, Any]:
    """Registry counts: `at` is the period's end (or now, if earlier)."""
    in_force = [a for a in auths if a.start < period.end and a.ended_at() > period.start]
    granted = [a for a in auths if a.created_at in period]
    urgent = [a for a in granted if a.urgent]
    per_month: dict[str, dict[str, int]] = {}
    for a in granted:
        row = per_month.setdefault(_month(a.created_at), {"standard": 0, "urgent": 0})
        row["urgent" if a.urgent else "standard"] += 1
    ratified = [a for a in urgent if a.ratified_at and a.ratified_at < rules.urgent_expiry(a.start)]
    waiting = [a for a in urgent if a.awaiting_ratification and a.state(at) != "expired"]
    events = [e for a in auths for e in a.history if e.at in period]
    renewals = [e for e in events if e.kind is EventKind.RENEW]
    return {
        "in_period": len(in_force),
        "by_state": _sorted(Counter(a.state(at) for a in in_force)),
        "by_case_type": _sorted(Counter(a.case_type.value for a in in_force)),
        "by_purpose": _sorted(Counter(p.value for a in in_force for p in a.application.purposes)),
        "by_officer_role": _sorted(Counter(a.application.officer.role for a in in_force)),
        "granted": {"standard": len(granted) - len(urgent), "urgent": len(urgent)},
        "granted_per_month": dict(sorted(per_month.items())),
        "urgent": {
            "granted": len(urgent),
            "ratified_in_time": len(ratified),
            "awaiting_ratification": len(waiting),
            "not_ratified": len(urgent) - len(ratified) - len(waiting),
        },
        "renewals": {
            "count": len(renewals),
            "with_results_update": sum(1 for e in renewals if e.text.strip()),
        },
        "cancellations": sum(1 for e in events if e.kind is EventKind.CANCEL),
        "reviews": {
            "done": sum(1 for e in events if e.kind is EventKind.REVIEW),
            "overdue_at_end": sum(1 for a in auths if rules.review_due(a, at)),
        },
    }


def audit_counts(entries: Iterable[dict[str, Any]], period: Period) -> dict[str, Any]:
    """Counts of the audited actions in the period (fields read: reason, kind, dates)."""
    actions: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_ref: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    purged = {"archives": 0, "metadata_partitions": 0}
    for entry in entries:
        try:
            at = parse_utc(str(entry.get("ts")))
        except ValueError:
            continue
        if at not in period:
            continue
        action = str(entry.get("action"))
        raw = entry.get("fields")
        fields: dict[str, Any] = raw if isinstance(raw, dict) else {}
        actions[action] += 1
        if action.endswith("_refused"):
            refused[action] += 1
        if action == Action.SEARCH:
            by_reason[str(fields.get("reason") or "(none)")] += 1
            for ref in entry.get("refs") or ["(no ref)"]:
                by_ref[str(ref)] += 1
        elif action == Action.PURGE:
            if fields.get("kind") == "metadata":
                dates = fields.get("dates")
                purged["metadata_partitions"] += len(dates) if isinstance(dates, list) else 1
            else:
                purged["archives"] += 1
    return {
        "capture_gaps": {a.value: actions[a.value] for a in GAPS},
        "searches": {
            "count": actions[Action.SEARCH.value],
            "by_reason": _sorted(by_reason),
            "by_ref": _sorted(by_ref),
        },
        "exports": {
            "export": actions[Action.EXPORT.value],
            "bundle": actions[Action.BUNDLE.value],
        },
        "collateral": {
            "proposed": actions[Action.COLLATERAL_PROPOSE.value],
            "removed": actions[Action.COLLATERAL_APPROVE.value],
        },
        "purges": purged,
        "refusals": _sorted(refused),
        "evidence_holds": {
            "placed": actions[Action.EVIDENCE_HOLD.value],
            "released": actions[Action.EVIDENCE_RELEASE.value],
        },
        "retention_runs": actions[Action.RETENTION_RUN.value],
        "audit_entries_in_period": sum(actions.values()),
    }


def retention_reviews(
    conn: sqlite3.Connection, paths: DataPaths, period: Period, at: datetime, review_days: int
) -> dict[str, Any]:
    done = [e for e in holds_mod.review_events(conn) if e.at in period]
    return {
        "done": len(done),
        "by_decision": _sorted(Counter(e.kind for e in done)),
        "overdue_at_end": len(review_due_refs(conn, paths, at, review_days)),
        "holds_in_force_at_end": sum(
            1 for e in holds_mod.active_holds(conn).values() if e.at < period.end
        ),
    }


def build(
    conn: sqlite3.Connection,
    paths: DataPaths,
    entries: Iterable[dict[str, Any]],
    period: Period,
    now: datetime,
    review_days: int,
    audit_chain: dict[str, Any],
    gateway: dict[str, str],
) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    at = min(period.end, now)
    return {
        "report": "lbm-gateway scrutiny report",
        "period": period.as_dict(),
        "generated_at": format_utc(now),
        "gateway": gateway,
        "audit_chain": audit_chain,
        "authorisations": authorisations(load_all(conn), period, at),
        "retention_reviews": retention_reviews(conn, paths, period, at, review_days),
        **audit_counts(entries, period),
    }


def _lines(data: Any, indent: int) -> list[str]:
    pad = "  " * indent
    if not isinstance(data, dict):
        return [f"{pad}{data}"]
    if not data:
        return [f"{pad}none"]
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(f"{pad}{key}:")
            out += _lines(value, indent + 1)
        else:
            out.append(f"{pad}{key}: {value}")
    return out


def as_text(report: dict[str, Any], safe: Any = str) -> str:
    """The report as indented text; `safe` escapes free text for a terminal."""
    chain = report["audit_chain"]
    lines = [
        f"scrutiny report {report['period']['from']} to {report['period']['to']} "
        f"(UTC, end excluded), gateway {report['gateway']['id']}",
        "counts only: no content, no search results, no subject's identity",
        f"audit chain: {'verified' if chain['ok'] else 'FAILED'} ({chain['entries']} entries)"
        + ("" if chain["ok"] else f": {chain.get('problem')}"),
        f"gateway allowed-signers line: {report['gateway']['allowed_signers']}",
    ]
    skip = {"report", "period", "generated_at", "gateway", "audit_chain"}
    for key, value in report.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += _lines(value, 1)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(safe(line) for line in lines)

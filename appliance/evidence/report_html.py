"""The scrutiny report as one self-contained HTML page: inline CSS and inline SVG charts, no
script, no external resource of any kind (a Content-Security-Policy of `default-src 'none'`
says so to the browser too), every text escaped. Opens offline in any browser.
"""

from __future__ import annotations

from html import escape
from typing import Any

CSS = """
body{font-family:sans-serif;margin:2em;color:#1b1b1b;max-width:70em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;
border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left;font-weight:normal}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176317;font-weight:bold}.bad{color:#a11;font-weight:bold}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{border:1px solid #ddd;padding:.5em}
code{font-size:.85em;word-break:break-all}
"""
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030", "#319795")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _t(value: Any) -> str:
    return escape(str(value), quote=True)


def hbars(title: str, data: dict[str, int], width: int = 440) -> str:
    """A horizontal bar chart of `data` (label -> count) as inline SVG."""
    items = list(data.items()) or [("(none)", 0)]
    top = max(1, *(v for _, v in items))
    row, label_w = 22, 200
    height = row * len(items) + 30
    parts = [
        f'<svg role="img" aria-label="{_t(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<text x="0" y="14" font-size="13" font-weight="bold">{_t(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 24 + i * row
        bar = int((width - label_w - 40) * value / top)
        colour = COLOURS[i % len(COLOURS)]
        parts += [
            f'<text x="0" y="{y + 14}" font-size="11">{_t(label[:34])}</text>',
            f'<rect x="{label_w}" y="{y + 3}" width="{max(bar, 1)}" height="{row - 6}" '
            f'fill="{colour}"/>',
            f'<text x="{label_w + bar + 4}" y="{y + 14}" font-size="11">{value}</text>',
        ]
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def months_chart(title: str, per_month: dict[str, dict[str, int]], width: int = 420) -> str:
    """Stacked columns per month (standard, urgent) as inline SVG."""
    months = list(per_month.items()) or [("(none)", {"standard": 0, "urgent": 0})]
    top = max(1, *(sum(v.values()) for _, v in months))
    height, base, plot = 220, 190, 150
    step = min(80, max(24, (width - 40) // len(months)))
    width = max(width, 40 + step * len(months))
    parts = [
        f'<svg role="img" aria-label="{_t(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<text x="0" y="14" font-size="13" font-weight="bold">{_t(title)}</text>',
        f'<line x1="30" y1="{base}" x2="{width}" y2="{base}" stroke="#888"/>',
    ]
    for i, (month, counts) in enumerate(months):
        x, y = 34 + i * step, base
        for j, kind in enumerate(("standard", "urgent")):
            h = int(plot * counts.get(kind, 0) / top)
            if h:
                parts.append(
                    f'<rect x="{x}" y="{y - h}" width="{step - 8}" height="{h}" '
                    f'fill="{COLOURS[j]}"><title>{_t(month)} {kind}: {counts[kind]}</title></rect>'
                )
            y -= h
        parts.append(
            f'<text x="{x}" y="{y - 4}" font-size="11">{sum(counts.values())}</text>'
            f'<text x="{x}" y="{base + 14}" font-size="10">{_t(month)}</text>'
        )
    parts.append(
        f'<rect x="{width - 150}" y="4" width="10" height="10" fill="{COLOURS[0]}"/>'
        f'<text x="{width - 136}" y="13" font-size="11">standard</text>'
        f'<rect x="{width - 76}" y="4" width="10" height="10" fill="{COLOURS[1]}"/>'
        f'<text x="{width - 62}" y="13" font-size="11">urgent</text></svg>'
    )
    return '<div class="chart">' + "".join(parts) + "</div>"


def _rows(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += _rows(value, f"{prefix}{key} / " if isinstance(value, dict) else prefix + key)
            if isinstance(value, dict) and not value:
                out.append((f"{prefix}{key}", "none"))
        return out
    return [(prefix.removesuffix(" / "), data)]


def table(data: dict[str, Any]) -> str:
    cells = "".join(
        f'<tr><th scope="row">{_t(k.replace("_", " "))}</th><td class="n">{_t(v)}</td></tr>'
        for k, v in _rows(data)
    )
    return f"<table>{cells}</table>"


SECTIONS = (
    ("Authorisations", "authorisations"),
    ("Retention reviews and holds", "retention_reviews"),
    ("Capture gaps", "capture_gaps"),
    ("Searches of metadata", "searches"),
    ("Evidence exports", "exports"),
    ("Collateral intrusion removed", "collateral"),
    ("Purges by retention", "purges"),
    ("Refusals", "refusals"),
    ("Evidence holds", "evidence_holds"),
)


def render(report: dict[str, Any]) -> str:
    period = report["period"]
    auths = report["authorisations"]
    chain = report["audit_chain"]
    verdict = (
        f'<span class="ok">verified</span> ({chain["entries"]} entries)'
        if chain["ok"]
        else f'<span class="bad">FAILED</span>: {_t(chain.get("problem") or "")}'
    )
    charts = "".join(
        [
            months_chart("Authorisations granted per month", auths["granted_per_month"]),
            hbars("In the period, by case type", auths["by_case_type"]),
            hbars("By state at the period's end", auths["by_state"]),
            hbars("By purpose", auths["by_purpose"]),
            hbars("By officer role", auths["by_officer_role"]),
            hbars("Searches by reference", report["searches"]["by_ref"]),
            hbars("Refusals", report["refusals"]),
        ]
    )
    body = [
        f"<h1>Scrutiny report: {_t(report['gateway']['id'])}</h1>",
        f"<p>Period {_t(period['from'])} to {_t(period['to'])} (UTC, end excluded); generated "
        f"{_t(report['generated_at'])}. Counts only: no content, no search results, no "
        "subject's identity.</p>",
        f"<p>Audit chain: {verdict}. Retention runs in the period: "
        f"{_t(report['retention_runs'])}.</p>",
        f"<p>Gateway allowed-signers line:<br><code>{_t(report['gateway']['allowed_signers'])}"
        "</code></p>",
        f'<h2>Charts</h2><div class="charts">{charts}</div>',
    ]
    for title, key in SECTIONS:
        body.append(f"<h2>{_t(title)}</h2>{table(report[key]) if report[key] else '<p>none</p>'}")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>Scrutiny report {_t(period['from'])} to {_t(period['to'])}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )

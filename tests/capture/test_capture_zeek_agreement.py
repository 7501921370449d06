"""Our flows agree with Zeek's conn.log on the dev corpus.

For every capture in pcaps/dev with a recommended conn.log (zeek_baselines/*/NOTE.md), each
Zeek connection is matched to one of ours by address/port 4-tuple and proto (several Zeek rows
may share a 4-tuple: matched greedily by agreement) and compared on packets, payload bytes and
IP bytes each way and conn_state, as far as the log has those columns. At least 95% of Zeek's
flows must match on every compared field, per file; the agreement is printed per file.

Deliberate differences (not counted as disagreement, or out of scope):
- Zeek leaves `duration`, `orig_bytes` and `resp_bytes` unset ('-') for a one-packet flow; we
  always give numbers (duration 0). A '-' in Zeek therefore matches any value of ours when our
  duration is 0.
- Zeek's `service` depends on which analyzers ran (bare mode `-b` loads few) and on
  protocol-specific analysis; `service` is not compared.
- Zeek's `history` letters 'C' (checksum), 'G' (content gap, needs reassembly), 'W' (zero
  window) are not produced; `missed_bytes` is approximated as sequence-space size minus
  payload carried (Zeek counts reassembly gaps).
- IPv6 "no next header" (59) packets are not flows (Zeek ignores them, e.g. Teredo bubbles);
  other non-TCP/UDP/ICMP protocols do make flows (Zeek 7 logs only some of them).
- Logs that are zeek-cut column subsets without a 4-tuple (tcp-syslog, wstunnel-https) are
  compared only when both sides have exactly one flow, on the columns present (history when
  nothing else is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from capture_zeeklogs import corpus, our_flows, read_zeek_log, recommended_logs

NUMERIC = ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes")
COMPARED = ("proto", *NUMERIC, "conn_state")
KEY = ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p")


def _captures() -> list[Any]:
    try:
        root = corpus()
    except pytest.skip.Exception as exc:  # collected without corpus: one skipped param
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))]
    out = []
    for pcap in sorted((root / "pcaps" / "dev").iterdir()):
        logs = recommended_logs(pcap.name, root)
        if "conn.log" in logs:
            out.append(pytest.param(pcap, logs["conn.log"], id=pcap.name))
    return out


def _field_ok(name: str, zeek: str, ours: dict[str, Any]) -> bool:
    if name in NUMERIC:
        if zeek == "-":
            return ours["duration_ns"] == 0 or name.endswith("pkts")
        return int(zeek) == int(ours[name])
    return zeek == str(ours[name])


def compare(conn_log: Path, ours: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(matched, total, problems) for one capture."""
    cols, zeek_rows = read_zeek_log(conn_log)
    compared = [c for c in COMPARED if c in cols]
    problems: list[str] = []
    if not all(k in cols for k in KEY):
        if len(zeek_rows) != 1 or len(ours) != 1:
            pytest.skip(f"{conn_log}: column subset without 4-tuple and several flows")
        fields = compared or ["history"]
        bad = [f for f in fields if not _field_ok(f, zeek_rows[0][f], ours[0])]
        if bad:
            problems.append(f"single flow differs on {bad}")
        return (0 if bad else 1), 1, problems
    pool: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in ours:
        key = (r["orig_h"], str(r["orig_p"]), r["resp_h"], str(r["resp_p"]), r["proto"])
        pool.setdefault(key, []).append(r)
    matched = 0
    pairs: list[tuple[dict[str, str], dict[str, Any]]] = []
    for z in zeek_rows:
        key = (*(z[k] for k in KEY), z.get("proto", ""))
        cands = pool.get(key) or []
        if not cands:
            problems.append(f"missing {key}")
            continue
        scored = [(sum(_field_ok(f, z[f], c) for f in compared), i) for i, c in enumerate(cands)]
        score, best = max(scored)
        cand = cands.pop(best)
        if score == len(compared):
            matched += 1
            pairs.append((z, cand))
        else:
            diffs = {f: (z[f], cand[f]) for f in compared if not _field_ok(f, z[f], cand)}
            problems.append(f"{key}: (zeek, ours) {diffs}")
    # informational: history letters and tunnel parents of the matched flows
    uid_map = {z.get("uid"): c["uid"] for z, c in pairs}
    for z, c in pairs:
        key = (*(z[k] for k in KEY), z.get("proto", ""))
        if "history" in z and z["history"].replace("-", "") != c["history"]:
            problems.append(
                f"{key}: history (zeek, ours) {z['history']!r} {c['history']!r} (informational)"
            )
        if z.get("tunnel_parents", "-") != "-":
            want = {uid_map.get(u) for u in z["tunnel_parents"].split(",")}
            if want != set(c["tunnel_parents"]):
                problems.append(f"{key}: tunnel_parents differ (informational)")
    return matched, len(zeek_rows), problems


@pytest.mark.parametrize(("pcap", "conn_log"), _captures())
def test_flows_agree_with_zeek_conn_log(pcap: Path, conn_log: Path) -> None:
    ours = our_flows(pcap)
    matched, total, problems = compare(conn_log, ours)
    share = matched / total if total else 1.0
    print(f"zeek agreement {pcap.name}: {matched}/{total} = {share:.1%} (ours {len(ours)} flows)")
    for p in problems:
        print("   ", p)
    assert share >= 0.95, f"{pcap.name}: only {matched}/{total} flows agree: {problems}"


def test_agreement_detects_a_difference() -> None:
    """The comparison is not vacuous: a changed packet count is a disagreement."""
    root = corpus()
    pcap = root / "pcaps" / "dev" / "zeek__http__get.pcap"
    log = recommended_logs(pcap.name, root)["conn.log"]
    ours = our_flows(pcap)
    assert compare(log, ours)[0] == 1
    ours[0]["orig_pkts"] += 1
    assert compare(log, ours)[0] == 0

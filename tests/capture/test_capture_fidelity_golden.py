"""Golden flow rows: our exact flows for every corpus capture that has a Zeek log, and for the
project's own captures in pcaps/, committed in tests/capture/golden/NAME.flows.jsonl.

The Zeek agreement test (test_capture_zeek_agreement.py) allows 5% disagreement per file, so a
regression in a few flows could hide under it; this test compares every deterministic field of
every flow exactly. When a change to the capture code is meant to change flows, regenerate
with the explicit command below and review the diff like code:

    .venv/bin/python tests/capture/test_capture_fidelity_golden.py regen
    git diff tests/capture/golden/

Fields kept: the conn.log fields (ts and duration in ns), ip_proto, community_id, vlan and
inner_vlan; `tunnel_parents` as the parents' keys ("proto orig_h:orig_p > resp_h:resp_p
@ts"), not their uids (uids are seeded per run). Rows are sorted by (ts, key).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as the regen command: pytest's pythonpath by hand
    sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO)]
FIELDS = (
    "ts",
    "orig_h",
    "orig_p",
    "resp_h",
    "resp_p",
    "proto",
    "ip_proto",
    "duration_ns",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "community_id",
    "vlan",
    "inner_vlan",
)


def captures(corpus_root: Path | None) -> dict[str, Path]:
    """{file name: path}: corpus captures with Zeek baselines, and pcaps/*.pcap*."""
    out = {p.name: p for p in sorted((REPO / "pcaps").glob("*.pcap*"))}
    if corpus_root is not None:
        for base in sorted((corpus_root / "zeek_baselines").iterdir()):
            found = sorted((corpus_root / "pcaps").glob(f"*/{base.name}"))
            if found and (base / "NOTE.md").exists():
                out[base.name] = found[0]
    return out


def _key(r: dict[str, Any]) -> str:
    return f"{r['proto']} {r['orig_h']}:{r['orig_p']} > {r['resp_h']}:{r['resp_p']} @{r['ts']}"


def golden_rows(pcap: Path) -> list[dict[str, Any]]:
    """Our flows for `pcap` in the golden form (see module docstring)."""
    from capture_zeeklogs import our_flows

    rows = our_flows(pcap)
    keys = {r["uid"]: _key(r) for r in rows}
    out = []
    for r in rows:
        g = {f: r[f] for f in FIELDS}
        g["tunnel_parents"] = sorted(keys.get(u, "?") for u in r["tunnel_parents"])
        out.append(g)
    return sorted(out, key=lambda g: (g["ts"], _key(g)))


def to_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def differences(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """Readable differences (missing, extra and changed rows by key), empty if equal."""
    w = {_key(r): r for r in want}
    g = {_key(r): r for r in got}
    out = [f"missing {k}" for k in w if k not in g] + [f"extra {k}" for k in g if k not in w]
    for k in w.keys() & g.keys():
        diff = {f: (w[k][f], g[k].get(f)) for f in w[k] if w[k][f] != g[k].get(f)}
        if diff:
            out.append(f"{k}: (golden, now) {diff}")
    if not out and want != got:
        out.append("same rows, different order or duplicate keys")
    return sorted(out)


def _corpus_or_none() -> Path | None:
    from lbm_testing import corpus_root

    root = corpus_root()
    return root if (root / "zeek_baselines").is_dir() else None


def _params() -> list[Any]:
    return [pytest.param(p, id=name) for name, p in captures(_corpus_or_none()).items()]


@pytest.mark.parametrize("pcap", _params())
def test_flows_equal_golden_rows(pcap: Path) -> None:
    path = GOLDEN / f"{pcap.name}.flows.jsonl"
    assert path.exists(), f"no golden rows for {pcap.name}: run the regen command ({__doc__})"
    want = [json.loads(line) for line in path.read_text().splitlines()]
    problems = differences(want, golden_rows(pcap))
    assert not problems, f"{pcap.name} flows changed ({len(problems)}): {problems[:12]}"


def test_every_capture_with_a_zeek_log_has_golden_rows_and_none_is_stale() -> None:
    root = _corpus_or_none()
    if root is None:
        pytest.skip("corpus not found (set LBM_CORPUS)")
    names = {f"{n}.flows.jsonl" for n in captures(root)}
    have = {p.name for p in GOLDEN.glob("*.flows.jsonl")}
    assert names - have == set(), "captures without golden rows"
    assert have - names == set(), "golden rows for captures that no longer exist"
    assert len([n for n in names if n.startswith("zeek__")]) >= 30


def test_a_one_packet_change_is_a_difference() -> None:
    """Not vacuous: one packet more, a changed parent or a lost row is reported."""
    rows = golden_rows(REPO / "pcaps" / "nested-tunnels.pcap")
    changed = [dict(r) for r in rows]
    changed[0]["orig_pkts"] += 1
    assert any("orig_pkts" in p for p in differences(rows, changed))
    child = next(i for i, r in enumerate(rows) if r["tunnel_parents"])
    changed = [dict(r) for r in rows]
    changed[child]["tunnel_parents"] = []
    assert any("tunnel_parents" in p for p in differences(rows, changed))
    assert differences(rows, rows[1:]) == [f"missing {_key(rows[0])}"]


def regen() -> int:
    """Rewrite tests/capture/golden/*.flows.jsonl from the current code (explicit command)."""
    root = _corpus_or_none()
    if root is None:
        print("corpus not found (set LBM_CORPUS): not regenerating", file=sys.stderr)
        return 1
    GOLDEN.mkdir(exist_ok=True)
    keep = set()
    for name, pcap in captures(root).items():
        path = GOLDEN / f"{name}.flows.jsonl"
        text = to_text(golden_rows(pcap))
        keep.add(path.name)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)} ({text.count(chr(10))} rows)")
    for stale in GOLDEN.glob("*.flows.jsonl"):
        if stale.name not in keep:
            stale.unlink()
            print(f"removed {stale.relative_to(REPO)}")
    print("review with: git diff tests/capture/golden/")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["regen"]:
        print(f"usage: {sys.argv[0]} regen", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(regen())

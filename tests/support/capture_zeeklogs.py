"""Test helpers: find the corpus, read Zeek baseline logs, compute our flows for a capture."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import corpus_root

from capture.decode.decoder import read_batches
from capture.flow.rows import to_rows
from capture.flow.table import FlowConfig, FlowTable


def corpus() -> Path:
    root = corpus_root()
    if not (root / "pcaps" / "dev").is_dir():
        pytest.skip(f"corpus not found at {root} (set LBM_CORPUS)")
    return root


def recommended_logs(capture: str, root: Path) -> dict[str, Path]:
    """{'conn.log': path, ...} from the capture's NOTE.md 'Recommended reference logs'."""
    note = root / "zeek_baselines" / capture / "NOTE.md"
    if not note.exists():
        return {}
    out = {}
    for m in re.finditer(r"^- \*\*(\w+\.log)\*\* -> `([^`]+)`", note.read_text(), re.M):
        out[m.group(1)] = note.parent / m.group(2)
    return out


def read_zeek_log(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a Zeek TSV log; headerless zeek-cut subsets use their first line
    as the column names. '-' (unset) and '(empty)' are kept as given."""
    cols: list[str] | None = None
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            cols = line.split("\t")[1:]
            continue
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        if cols is None:
            cols = parts
            continue
        rows.append(dict(zip(cols, parts, strict=False)))
    return cols or [], rows


def our_flows(pcap: Path, **cfg: Any) -> list[dict[str, Any]]:
    table = FlowTable(FlowConfig(seed=7, **cfg))
    chunks = []
    for batch in read_batches(pcap):
        chunks.extend(table.add(batch)[1])
    chunks.extend(table.flush())
    return to_rows(chunks)


def replay_tables(files: list[Path], root: Path) -> tuple[Any, Any]:
    """Run the real pipeline (no authorisations) into a fresh data dir; (flow, dns) tables."""
    from appliance.policy.snapshot import Snapshot
    from capture.pipeline import Pipeline
    from capture.replay import replay
    from store.metadata import read_stream
    from store.paths import DataPaths

    paths = DataPaths(root)
    snap = Snapshot.build()
    pipe = Pipeline(
        paths=paths,
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: snap,
        internal_networks=["10.0.0.0/8", "192.168.0.0/16"],
    )
    try:
        replay(files, pipe)
    finally:
        pipe.close()
    return read_stream(paths, "flow"), read_stream(paths, "dns")


def manifest_names(root: Path) -> dict[str, dict[str, tuple[int, list[str]]]]:
    """Per dev capture: {'SNI'|'HTTP Host'|'DNS q': (count, listed names)} from MANIFEST.md."""
    out: dict[str, dict[str, tuple[int, list[str]]]] = {}
    for line in (root / "MANIFEST.md").read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \|", line)
        if not m:
            continue
        found = {}
        for kind in ("SNI", "HTTP Host", "DNS q"):
            km = re.search(re.escape(kind) + r"\((\d+)\): ([^;|\]]+)", line)
            if km:
                names = [n.strip() for n in km.group(2).split(",") if n.strip()]
                found[kind] = (int(km.group(1)), names)
        if found:
            out.setdefault(m.group(1), found)
    return out

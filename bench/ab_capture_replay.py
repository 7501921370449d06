"""A/B of `lbm capture replay --json` between code trees, runs alternating (so a machine that
drifts, or a neighbour's load, hits every tree alike), a fresh data directory each run.

    .venv/bin/python bench/ab_capture_replay.py --runs 20 CAPTURE NAME=TREE [NAME=TREE ...]

TREE is a checkout (`git worktree add /tmp/old REV`) put first on PYTHONPATH, or `.` for this
one. Byte-compile each tree first (`python -m compileall -q TREE/appliance TREE/capture
TREE/store TREE/addons`): with PYTHONDONTWRITEBYTECODE set, a tree without `__pycache__` is
compiled at every run, 0.04-0.06 s more. Prints per tree the median, fastest and slowest
`total_s` (process start to the end), the digest's wait after the rows (`hash_wait_s`, when
the tree reports it) and the final flush (`close_s`). On a 2-core virtual machine the spread
of one tree is 10-15%: compare medians of 16 runs or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lbm_exe() -> str:
    return str(Path(sys.executable).with_name("lbm"))


def run_once(tree: str, capture: str, data: Path) -> dict[str, float]:
    env = dict(os.environ)
    if tree != ".":
        env["PYTHONPATH"] = str(Path(tree).resolve())
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run([lbm_exe(), "--data-dir", str(data), "init"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    out = subprocess.run(
        [lbm_exe(), "--data-dir", str(data), "capture", "replay", "--json", capture],
        env=env, check=True, capture_output=True,
    ).stdout  # fmt: skip
    timing: dict[str, float] = json.loads(out)["timing"]
    return timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("trees", nargs="+", metavar="NAME=TREE")
    ap.add_argument("--runs", type=int, default=16)
    a = ap.parse_args()
    trees = dict(t.split("=", 1) if "=" in t else (t, t) for t in a.trees)
    got: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="lbm-ab-") as tmp:
        for _ in range(a.runs):
            for name, tree in trees.items():
                got[name].append(run_once(tree, a.capture, Path(tmp) / "data"))
    for name, runs in got.items():
        total = sorted(r["total_s"] for r in runs)
        waits = [r["hash_wait_s"] for r in runs if "hash_wait_s" in r]
        wait = (
            f"hash_wait_s median {statistics.median(waits):.3f} max {max(waits):.3f}"
            f" (> 0.02 s in {sum(w > 0.02 for w in waits)} of {len(waits)})"
            if waits
            else "hash_wait_s not reported"
        )
        print(
            f"{name:12s} total_s median {statistics.median(total):.3f} "
            f"fastest {total[0]:.3f} slowest {total[-1]:.3f} | {wait} | close_s median "
            f"{statistics.median(r['close_s'] for r in runs):.3f}"
        )


if __name__ == "__main__":
    main()

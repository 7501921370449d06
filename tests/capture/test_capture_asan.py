"""`make asan`: the capture path's C helpers built with AddressSanitizer and
UndefinedBehaviorSanitizer are the ones the tests run, and the sanitizers do catch an
out-of-bounds read (so a clean `make asan` means something). These tests run only under
`make asan` (``LBM_CAPTURE_SANITIZE=1`` with the ASan runtime preloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capture.native import build

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not build.sanitized() or "libasan" not in os.environ.get("LD_PRELOAD", ""),
    reason="run by `make asan` (LBM_CAPTURE_SANITIZE=1 with libasan preloaded)",
)


def _needed(so: Path) -> str:
    return subprocess.run(
        ["readelf", "-d", str(so)], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_the_sanitized_helpers_are_the_ones_loaded() -> None:
    """No silent fallback: the record walker is C, both extensions come from the ASan cache
    directory and link the ASan and UBSan runtimes."""
    import capture.flow.tcpstate  # noqa: F401 - loads the tcpstate extension
    import capture.read.walk as fastpath

    assert fastpath.IMPLEMENTATION == "c"
    for ext in build.EXTENSIONS:
        assert ext.module_name() in sys.modules
        so = build.find(ext)
        assert so is not None and so.parent.name == "lbm-capture-asan", so
        needed = _needed(so)
        assert "libasan" in needed and "libubsan" in needed, needed


@pytest.mark.parametrize(
    ("code", "report"),
    [
        (  # a length larger than the buffer: the walker reads past its end
            "import numpy as np\n"
            "from capture.read import walk as fastpath\n"
            "buf = np.zeros(24, np.uint8)\n"
            "fastpath.walk_pcap(buf, 4096, False, 8, 65535)\n",
            "AddressSanitizer: heap-buffer-overflow",
        ),
        (  # an index out of an array's bounds: UBSan stops the process
            "from capture.native import build\n"
            "m = build.load(build.TCPSTATE)\n"
            "m.lib.tcp_size(m.ffi.new('tcpflow *'), 3)\n",
            "runtime error: index 3 out of bounds",
        ),
        (  # signed overflow in C (not hidden by Python's -fwrapv): UBSan stops the process
            "from capture.native import build\n"
            "m = build.load(build.TCPSTATE)\n"
            "ffi = m.ffi\n"
            "f = ffi.new('tcpflow *')\n"
            "f.start[0] = -(2**63)\n"
            "f.ack[0] = 2**63 - 1\n"
            "f.last[0] = 2**63 - 1\n"
            "f.state[0] = 4\n"
            "m.lib.tcp_size(f, 0)\n",
            "runtime error: signed integer overflow",
        ),
    ],
    ids=["asan-overflow", "ubsan-bounds", "ubsan-overflow"],
)
def test_the_sanitizers_catch_a_bad_call(code: str, report: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode != 0 and report in run.stderr, run.stderr[-2000:]

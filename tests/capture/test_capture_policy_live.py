"""Live capture (small batches, the kernel's timestamps) keeps a subject's flows to
do-not-decrypt servers out of the archive too: `lbm capture live` on a veth pair in a network
namespace made by the test, tcpreplay sending pcaps/tls-split-hello.pcap slowly so that the
ClientHello segments arrive in different batches. The subject's other flows are archived whole.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from capture_policy import REF, endpoints, grant, import_leases, packets, pcap_packets, records
from lbm_testing import REPO, Lbm
from netns import sh, veth_namespace

from store.metadata import read_stream
from store.paths import DataPaths

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("tcpreplay") is None,
        reason="needs iproute2 and tcpreplay (Debian packages)",
    ),
]

SPLIT = REPO / "pcaps" / "tls-split-hello.pcap"
SUBJECT_IP, OTHER_IP = "10.40.0.5", "10.40.0.6"
DND_PORTS = {50001, 50002}


@pytest.fixture
def netns() -> Iterator[str]:
    with veth_namespace("lbmpol") as name:
        yield name


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_pcaps", REPO / "pcaps" / "make_pcaps.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("ring", [True, False], ids=["tpacket-v3-ring", "socket-reads"])
def test_live_small_batches_keep_do_not_decrypt_flows_out(
    netns: str, lbm: Lbm, tmp_path: Path, ring: bool
) -> None:
    now = datetime.now(UTC)
    day = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    import_leases(lbm, tmp_path, at, [("p100", SUBJECT_IP, day, ""), ("p200", OTHER_IP, day, "")])
    lbm.env.pop("LBM_FAKE_NOW", None)
    identity = grant(lbm, at)  # starts now: live decides on the kernel's timestamps
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "appliance.cli.main",
           "--data-dir", str(lbm.data_dir), "capture", "live", "--interface", "lbm-rx",
           "--json"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LBM_FAKE_NOW"}
    env["LBM_CAPTURE_NO_RING"] = "0" if ring else "1"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    ready = lbm.data_dir / "run" / "capture-lbm-rx.ready"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "capture never became ready"
            time.sleep(0.05)
        sh("ip", "netns", "exec", netns, "tcpreplay", "-q", "-i", "lbm-tx", "--pps", "40",
           str(SPLIT))  # fmt: skip
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert '"packets": 54' in out, out

    gen = _generator()
    paths = DataPaths(lbm.data_dir)
    recs = records(paths, identity)
    got = [frame for _ts, frame in packets(recs)]
    for frame in got:
        src, dst, sport, dport = endpoints(frame)
        assert not {sport, dport} & DND_PORTS, (src, sport, dst, dport)
        assert OTHER_IP not in (src, dst)
    for r in recs:
        assert gen.DND_CANARY not in r.data and gen.OTHER_CANARY not in r.data
    expected = [
        f
        for _ts, f in pcap_packets(SPLIT)
        if SUBJECT_IP in endpoints(f)[:2] and not set(endpoints(f)[2:]) & DND_PORTS
    ]
    assert sorted(got) == sorted(expected)
    rows = {r["client_port"]: r for r in read_stream(paths, "flow").to_pylist()}
    assert rows[50001]["server_name"] == "portal.nhs.uk" and rows[50001]["refs"] == []
    assert rows[50003]["refs"] == [REF]

"""`lbm capture live` on a veth pair in a network namespace made by the test: tcpreplay sends a
dev capture into one end, the daemon captures the other, and its flows equal those of
`lbm capture replay` of the same file. SIGTERM ends the daemon cleanly (exit 0, flows flushed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
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

COMPARED = (
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "proto",
    "orig_pkts",
    "resp_pkts",
    "orig_bytes",
    "resp_bytes",
    "orig_ip_bytes",
    "resp_ip_bytes",
    "conn_state",
    "history",
    "service",
    "http_host",
)


@pytest.fixture
def netns() -> Iterator[str]:
    with veth_namespace("lbmtest") as name:
        yield name


def _flows(data_dir: Path) -> list[tuple[object, ...]]:
    rows = read_stream(DataPaths(data_dir), "flow").to_pylist()
    return sorted(tuple(r[c] for c in COMPARED) for r in rows)


@dataclass
class LiveRun:
    """A `lbm capture live` run: stdout/stderr/returncode once it has stopped."""

    out: str = ""
    err: str = ""
    returncode: int | None = None


@contextmanager
def live_capture(
    data_dir: Path, interface: str, ring: bool, prefix: tuple[str, ...] = ()
) -> Iterator[LiveRun]:
    """Start `lbm capture live` (under `prefix`, e.g. `ip netns exec NS`), wait until it is
    ready, let the body send traffic, then SIGTERM it and collect its output."""
    cmd = [*prefix, sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data_dir),
           "capture", "live", "--interface", interface, "--json"]  # fmt: skip
    env = {**os.environ, "LBM_CAPTURE_NO_RING": "0" if ring else "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    run = LiveRun()
    ready = data_dir / "run" / f"capture-{interface}.ready"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "capture never became ready"
            time.sleep(0.05)
        yield run
        proc.send_signal(signal.SIGTERM)
        run.out, run.err = proc.communicate(timeout=30)
        run.returncode = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not ready.exists()


@pytest.mark.parametrize("ring", [True, False], ids=["tpacket-v3-ring", "socket-reads"])
def test_live_capture_matches_replay(netns: str, tmp_path: Path, corpus: Path, ring: bool) -> None:
    pcap = corpus / "pcaps" / "dev" / "zeek__wikipedia.pcap"
    live_dir, replay_dir = tmp_path / "live", tmp_path / "replay"
    Lbm(live_dir)("init", check=True)
    Lbm(replay_dir)("init", check=True)
    with live_capture(live_dir, "lbm-rx", ring, ("ip", "netns", "exec", netns)) as run:
        sh("ip", "netns", "exec", netns, "tcpreplay", "-q", "-i", "lbm-tx", "--mbps", "50",
           str(pcap))  # fmt: skip
        time.sleep(1.0)
    assert run.returncode == 0, run.err
    out = run.out
    assert '"packets": 136' in out
    assert f'"live_reader": "{"tpacket_v3" if ring else "socket"}"' in out
    Lbm(replay_dir)("capture", "replay", str(pcap), check=True)
    live, replayed = _flows(live_dir), _flows(replay_dir)
    assert len(replayed) == 34
    assert live == replayed
    intf = {r["interface"] for r in read_stream(DataPaths(live_dir), "flow").to_pylist()}
    assert intf == {"lbm-rx"}


def test_live_on_a_missing_interface_fails_clearly(lbm: Lbm) -> None:
    res = lbm("capture", "live", "--interface", "nosuchif0")
    assert res.returncode == 1
    assert "nosuchif0" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("ring", [True, False], ids=["tpacket-v3-ring", "socket-reads"])
def test_loopback_packets_are_counted_once(tmp_path: Path, ring: bool) -> None:
    """The loopback device shows each packet as outgoing and incoming; like libpcap we keep
    one copy, so packet counts match what was sent."""
    import socket

    data = tmp_path / "lo"
    Lbm(data)("init", check=True)
    with (
        live_capture(data, "lo", ring) as run,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        for _ in range(3):
            s.sendto(b"x", ("127.0.0.1", 9))  # discard port: nobody listens
        time.sleep(0.5)
    assert run.returncode == 0, run.err
    rows = [r for r in read_stream(DataPaths(data), "flow").to_pylist()
            if r["proto"] == "udp" and r["client_port"] == port]  # fmt: skip
    assert len(rows) == 1, rows
    assert rows[0]["orig_pkts"] == 3 and rows[0]["server_port"] == 9

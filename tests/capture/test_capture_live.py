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
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm

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


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"lbmtest{os.getpid()}"
    try:
        sh("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        ns = ("ip", "netns", "exec", name)
        sh(*ns, "ip", "link", "add", "lbm-tx", "type", "veth", "peer", "name", "lbm-rx")
        for dev in ("lbm-tx", "lbm-rx"):  # no addresses, no IPv6: the kernel stays silent
            sh(*ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh(*ns, "ip", "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def _flows(data_dir: Path) -> list[tuple[object, ...]]:
    rows = read_stream(DataPaths(data_dir), "flow").to_pylist()
    return sorted(tuple(r[c] for c in COMPARED) for r in rows)


@pytest.mark.parametrize("ring", [True, False], ids=["tpacket-v3-ring", "socket-reads"])
def test_live_capture_matches_replay(netns: str, tmp_path: Path, corpus: Path, ring: bool) -> None:
    pcap = corpus / "pcaps" / "dev" / "zeek__wikipedia.pcap"
    live_dir, replay_dir = tmp_path / "live", tmp_path / "replay"
    Lbm(live_dir)("init", check=True)
    Lbm(replay_dir)("init", check=True)
    cmd = [
        "ip",
        "netns",
        "exec",
        netns,
        sys.executable,
        "-m",
        "appliance.cli.main",
        "--data-dir",
        str(live_dir),
        "capture",
        "live",
        "--interface",
        "lbm-rx",
        "--json",
    ]
    env = {**os.environ, "LBM_CAPTURE_NO_RING": "0" if ring else "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        ready = live_dir / "run" / "capture-lbm-rx.ready"
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "capture never became ready"
            time.sleep(0.05)
        sh(
            "ip",
            "netns",
            "exec",
            netns,
            "tcpreplay",
            "-q",
            "-i",
            "lbm-tx",
            "--mbps",
            "50",
            str(pcap),
        )
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not ready.exists()
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
    env = {**os.environ, "LBM_CAPTURE_NO_RING": "0" if ring else "1"}
    cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data), "capture",
           "live", "--interface", "lo"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        ready = data / "run" / "capture-lo.ready"
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "capture never became ready"
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            for _ in range(3):
                s.sendto(b"x", ("127.0.0.1", 9))  # discard port: nobody listens
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    rows = [r for r in read_stream(DataPaths(data), "flow").to_pylist()
            if r["proto"] == "udp" and r["client_port"] == port]  # fmt: skip
    assert len(rows) == 1, rows
    assert rows[0]["orig_pkts"] == 3 and rows[0]["server_port"] == 9

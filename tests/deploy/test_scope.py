"""`[web] transparent_scope = "subjects"` on a simulated network: three namespaces (clients,
gateway, internet), the real `lbm gateway rules --apply` and `lbm gateway scope-sync` in the
gateway, two client addresses mapped by an identity feed to a subject and a non-subject.

The proxy's port is served by a banner listener standing in for the proxy (what is under test is
where the kernel sends each connection, not the proxy: tests/web and tests/e2e run the proxy).
A connection from the subject's address reaches that port; the non-subject's reaches the real
server untouched. A lease change and a cancellation move the sets within 5 s. QUIC is dropped for
everyone. Neither the daemon's output nor the audit log names an address."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from capture_policy import set_config
from lbm_testing import INV_RECIPIENT, REPO, Lbm
from netns import Topology, gateway_topology

from appliance.cli.gateway_scope import subject_addresses
from appliance.policy.snapshot import load_snapshot
from store import sqlite

pytestmark = pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed")

PROXY_PORT = 8080
MOVE_LIMIT = 5.0  # seconds: a grant, cancellation or lease change is in force within this

SERVERS = r"""
import socket, sys, threading
def tcp(host, port, banner):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(banner); c.close()
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(b"UDP" + data, peer)
spec = sys.argv[1:]
for item in spec:
    kind, port, banner = item.split(":")
    target = tcp if kind == "tcp" else udp
    args = ("0.0.0.0", int(port), banner.encode()) if kind == "tcp" else ("0.0.0.0", int(port))
    threading.Thread(target=target, args=args, daemon=True).start()
print("up", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
src, dst, proto, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if proto == "tcp":
    s = socket.create_connection((dst, port), timeout=3, source_address=(src, 0))
    print(s.recv(100).decode())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(1.0)
    s.sendto(b"q", (dst, port))
    try:
        print(s.recv(100).decode())
    except TimeoutError:
        print("no answer")
"""


def feed(path: Path, subject_ip: str, other_ip: str) -> Path:
    path.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        f"p12345,ip,{subject_ip},2020-01-01T00:00:00Z,\n"
        f"p23456,ip,{other_ip},2020-01-01T00:00:00Z,\n"
        # p34567 holds an address but is a subject on email only: not redirected
        "p34567,ip,10.201.1.77,2020-01-01T00:00:00Z,\n"
        # a lease that starts in the future is not current
        "p12345,ip,10.201.1.88,2099-01-01T00:00:00Z,\n"
    )
    return path


@dataclass
class Net:
    topo: Topology
    lbm: Lbm
    sync: subprocess.Popen[str]
    inproc: Callable[..., object]
    grant: Callable[..., None]

    def connect(self, src: str, proto: str = "tcp", port: int = 443) -> str:
        out = subprocess.run(
            [*Topology.exec(self.topo.client), sys.executable, "-c", CLIENT, src,
             self.topo.server_ip, proto, str(port)],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def until(self, src: str, wanted: str) -> float:
        """Seconds until a new connection from `src` reaches `wanted`; fails after the limit."""
        start = time.monotonic()
        while (got := self.connect(src)) != wanted:
            assert time.monotonic() - start < MOVE_LIMIT, f"{src} still reaches {got}"
            time.sleep(0.2)
        return time.monotonic() - start


@pytest.fixture(scope="module")
def net(
    tmp_path_factory: pytest.TempPathFactory,
    lbm_inproc: Callable[..., object],
    grant_inproc: Callable[..., None],
) -> Iterator[Net]:
    base = tmp_path_factory.mktemp("scope")
    with gateway_topology("lbmsc", clients=2) as topo:
        lbm = Lbm(base / "data")
        data = lbm.data_dir
        lbm_inproc(data, "init")
        set_config(data, "web", "mode", '"transparent"')
        set_config(data, "web", "listen_host", '"0.0.0.0"')
        set_config(data, "web", "listen_port", str(PROXY_PORT))
        set_config(data, "web", "transparent_scope", '"subjects"')
        set_config(data, "gateway", "inside_interface", '"g-c"')
        set_config(data, "gateway", "inside_networks", '["10.201.1.0/24"]')
        subject_ip, other_ip = topo.client_ips
        lbm_inproc(data, "identity", "import", str(feed(base / "feed.csv", subject_ip, other_ip)))
        lbm_inproc(
            data, "keys", "investigator", "add", "inv1", INV_RECIPIENT, "--principal", "p900"
        )
        grant_inproc(data, "REF-WEB", "p12345")
        grant_inproc(data, "REF-MAIL", "p34567", channel="email")
        servers: list[subprocess.Popen[str]] = []
        sync: subprocess.Popen[str] | None = None
        try:
            for ns, spec in (
                (topo.server, ["tcp:443:SERVER", "tcp:80:SERVER", "udp:443:", "udp:4433:"]),
                (topo.gateway, [f"tcp:{PROXY_PORT}:PROXY"]),
            ):
                proc = subprocess.Popen(
                    [*Topology.exec(ns), sys.executable, "-c", SERVERS, *spec],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                servers.append(proc)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            lbm_cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data)]
            applied = subprocess.run(
                [*Topology.exec(topo.gateway), *lbm_cmd, "gateway", "rules", "--apply"],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            assert applied.returncode == 0, applied.stderr
            sync = subprocess.Popen(
                [*Topology.exec(topo.gateway), *lbm_cmd, "gateway", "scope-sync"],
                stderr=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            ready = data / "run" / "scope-sync.ready"
            deadline = time.monotonic() + 20
            while not ready.exists():
                assert sync.poll() is None and time.monotonic() < deadline, "scope-sync not ready"
                time.sleep(0.05)
            yield Net(topo, lbm, sync, lbm_inproc, grant_inproc)
        finally:
            for proc in [*servers, *([sync] if sync else [])]:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def test_only_the_subjects_address_reaches_the_proxy(net: Net) -> None:
    subject_ip, other_ip = net.topo.client_ips
    assert net.connect(subject_ip) == "PROXY"
    assert net.connect(subject_ip, port=80) == "PROXY"
    assert net.connect(other_ip) == "SERVER"  # forwarded by the kernel, never near the proxy
    # QUIC is dropped for subject and non-subject alike; other UDP passes
    assert net.connect(other_ip, "udp", 443) == "no answer"
    assert net.connect(subject_ip, "udp", 443) == "no answer"
    assert net.connect(other_ip, "udp", 4433) == "UDPq"


def test_a_set_flushed_behind_its_back_is_refilled(net: Net) -> None:
    subject_ip, _other = net.topo.client_ips
    flush = [*Topology.exec(net.topo.gateway), "nft", "flush", "set", "inet", "lbm", "subjects4"]
    subprocess.run(flush, check=True, timeout=30)
    assert net.connect(subject_ip) == "SERVER"  # the safe direction: forwarded, metadata only
    net.until(subject_ip, "PROXY")


def test_the_set_holds_current_web_subject_leases_only(net: Net) -> None:
    conn = sqlite.connect(net.lbm.data_dir / "registry.sqlite", readonly=True)
    try:
        snapshot = load_snapshot(conn)
    finally:
        conn.close()
    subject_ip, _other = net.topo.client_ips
    # not the email-only subject's address, not a lease that starts in 2099
    assert subject_addresses(snapshot, datetime.now(UTC)) == {subject_ip}
    assert subject_addresses(snapshot, datetime(2019, 1, 1, tzinfo=UTC)) == frozenset()


def test_a_lease_change_and_a_cancellation_move_the_sets_within_5_s(net: Net) -> None:
    subject_ip, other_ip = net.topo.client_ips
    moved = feed(net.lbm.data_dir.parent / "moved.csv", other_ip, subject_ip)
    net.inproc(net.lbm.data_dir, "identity", "import", str(moved))  # the subject: other_ip now
    net.until(other_ip, "PROXY")
    net.until(subject_ip, "SERVER")
    net.inproc(net.lbm.data_dir, "auth", "cancel", "REF-WEB", "--reason", "t", "--officer", "p100")
    net.until(other_ip, "SERVER")


def test_a_new_grant_moves_the_sets_within_5_s(net: Net) -> None:
    _subject, other_ip = net.topo.client_ips  # p12345 holds other_ip since the lease change
    assert net.connect(other_ip) == "SERVER"
    net.grant(net.lbm.data_dir, "REF-WEB-2", "p12345")
    net.until(other_ip, "PROXY")


def test_nothing_written_names_an_address(net: Net) -> None:
    net.sync.terminate()
    assert net.sync.wait(timeout=15) == 0
    assert net.sync.stderr is not None
    output = net.sync.stderr.read()
    audit = (net.lbm.data_dir / "audit" / "audit.jsonl").read_text()
    for ip in (*net.topo.client_ips, "10.201.1.77"):
        assert ip not in output and ip not in audit
    stops = [json.loads(x) for x in audit.splitlines() if '"daemon_stop"' in x]
    assert stops and stops[-1]["fields"]["daemon"] == "scope-sync"
    assert not (net.lbm.data_dir / "run" / "scope-sync.ready").exists()


def test_lbm_run_supervises_scope_sync_in_subjects_scope_only(net: Net) -> None:
    from appliance.cli.app import App
    from appliance.cli.run_cmd import enabled_daemons

    data = net.lbm.data_dir
    daemons, _notes = enabled_daemons(App(str(data), None))
    (sync,) = [d for d in daemons if d.name == "scope-sync"]
    assert sync.argv[-2:] == ["gateway", "scope-sync"]
    set_config(data, "web", "transparent_scope", '"all"')
    try:
        names = [d.name for d in enabled_daemons(App(str(data), None))[0]]
        assert "proxy" in names and "scope-sync" not in names
    finally:
        set_config(data, "web", "transparent_scope", '"subjects"')


@pytest.mark.parametrize("name", ["identity-feed-dhcp-logon.csv", "identity-feed-dhcp-logon.jsonl"])
def test_the_example_lease_feeds_load_cleanly_and_hand_over_the_hot_desk(name: str) -> None:
    from appliance.policy.identity import IdentityMap
    from appliance.policy.identity_feed import read_feed

    parsed = read_feed(REPO / "docs" / "examples" / name)
    assert parsed.bad == () and parsed.rows
    identity = IdentityMap.build(parsed.rows)
    assert identity.conflicts == ()
    desk = "10.20.31.17"
    assert identity.resolve_ip(desk, datetime(2026, 3, 2, 12, 59, tzinfo=UTC)) == "p23456"
    assert identity.resolve_ip(desk, datetime(2026, 3, 2, 13, 0, tzinfo=UTC)) == "p34567"
    assert identity.resolve(email="john.smith@FORCE.example") == "p12345"

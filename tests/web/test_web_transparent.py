"""Transparent mode in network namespaces (tests/support/netns.py `gateway_topology`).

Clients in one namespace, `lbm proxy run` with `[web] mode = "transparent"` in the gateway
namespace behind an nftables `redirect to :PORT` for TCP 80/443, a real HTTP and HTTPS server in
a third namespace (a leaf certificate from the web tests' CA). The principal comes from the
identity map by client IP (the subject leased 10.201.1.2, the non-subject 10.201.1.3): the
subject's HTTPS is intercepted (our CA) and archived, the non-subject's is passed through
unopened (the server's own certificate), both get metadata rows; UDP 443 (QUIC) is dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import REPO, Lbm
from netns import WEB_SERVER, Topology, gateway_topology, peer_cert
from web_proxy import (
    OTHER,
    REF,
    SUBJECT,
    ProxyDaemon,
    investigator,
    lease,
    proxy_ca,
    records,
    set_option,
)
from web_upstream import TestCA

HOST = "www.example.test"
NOTICE = "notice.lbm.invalid"


@pytest.fixture
def topo() -> Iterator[Topology]:
    with gateway_topology("lbmweb") as t:
        yield t


def _start_server(topo: Topology, tmp_path: Path) -> tuple[subprocess.Popen[str], TestCA, str]:
    ca = TestCA(tmp_path / "server-ca")
    cert, key = ca.issue([HOST], stem="server")
    proc = subprocess.Popen(
        [*topo.exec(topo.server), sys.executable, "-c", WEB_SERVER, topo.server_ip, str(cert),
         str(key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, ca, TestCA.fingerprint(cert)


def _start_proxy(topo: Topology, lbm: Lbm) -> ProxyDaemon:
    run = lbm.data_dir / "run"
    ready = run / "proxy.ready"
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in lbm.env.items() if k != "LBM_FAKE_NOW"}
    proc = subprocess.Popen(
        [*topo.exec(topo.gateway), sys.executable, "-m", "appliance.cli.main", "--data-dir",
         str(lbm.data_dir), "proxy", "run"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"lbm proxy run did not start:\n{out}\n{err}")
        time.sleep(0.05)
    return ProxyDaemon(lbm.data_dir, proc, int((run / "proxy.port").read_text()))


def _curl(topo: Topology, src: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*topo.exec(topo.client), "curl", "-sS", "--max-time", "20", "--interface", src,
         "--resolve", f"{HOST}:443:{topo.server_ip}", "--resolve", f"{HOST}:80:{topo.server_ip}",
         *args, url],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip


def test_transparent_principal_by_ip_subject_intercepted_other_passed(
    topo: Topology, lbm: Lbm, tmp_path: Path
) -> None:
    subject_ip, other_ip = topo.client_ips
    server, server_ca, server_sha = _start_server(topo, tmp_path)
    try:
        set_option(lbm.data_dir, "web", "mode", '"transparent"')
        set_option(lbm.data_dir, "web", "listen_host", json.dumps(topo.gateway_client_ip))
        set_option(lbm.data_dir, "web", "upstream_ca_file", json.dumps(str(server_ca.ca_file)))
        lease(lbm, tmp_path, (SUBJECT, subject_ip), (OTHER, other_ip))
        identity = investigator(lbm)
        lbm.grant(REF, SUBJECT)
        daemon = _start_proxy(topo, lbm)
        try:
            topo.redirect(daemon.port)
            ours = proxy_ca(lbm.data_dir)
            # the subject: intercepted (our CA verifies), archived
            r = _curl(topo, subject_ip, f"https://{HOST}/subject-secret-path", "--cacert",
                      str(ours))  # fmt: skip
            assert r.returncode == 0 and r.stdout == "hello /subject-secret-path", r.stderr
            assert peer_cert(topo, subject_ip, HOST, ours) != server_sha
            r = _curl(topo, subject_ip, f"http://{HOST}/subject-plain-path")
            assert r.stdout == "hello /subject-plain-path", r.stderr
            # the non-subject: passed through unopened, the server's own certificate
            r = _curl(topo, other_ip, f"https://{HOST}/other-secret-path", "--cacert",
                      str(server_ca.ca_file))  # fmt: skip
            assert r.returncode == 0 and r.stdout == "hello /other-secret-path", r.stderr
            assert peer_cert(topo, other_ip, HOST, server_ca.ca_file) == server_sha
            refused = _curl(topo, other_ip, f"https://{HOST}/x", "--cacert", str(ours))
            assert refused.returncode != 0  # our CA does not vouch for what the other sees
            r = _curl(topo, other_ip, f"http://{HOST}/other-plain-path")
            assert r.stdout == "hello /other-plain-path", r.stderr
            # the notice host, whatever address it resolves to: answered by the proxy itself
            for scheme in ("https", "http"):
                port = 443 if scheme == "https" else 80
                r = _curl(topo, other_ip, f"{scheme}://{NOTICE}/", "--cacert", str(ours),
                          "--resolve", f"{NOTICE}:{port}:{topo.server_ip}")  # fmt: skip
                assert r.returncode == 0 and "Acceptable-use notice" in r.stdout, r.stderr
            # QUIC: UDP 443 from the clients is dropped at the gateway
            assert not _udp_reaches_server(topo, other_ip)
        finally:
            code, out, err = daemon.stop()
        assert code == 0, err
    finally:
        server.kill()
        server.communicate()
    rows = daemon.rows()
    by_ip: dict[str, set[tuple[str | None, str | None]]] = {}
    for row in rows:
        by_ip.setdefault(row["client_ip"], set()).add((row["principal"], row["decision"]))
    assert (SUBJECT, "intercepted") in by_ip[subject_ip]
    assert {p for p, _ in by_ip[subject_ip]} == {SUBJECT}
    assert (OTHER, "passed") in by_ip[other_ip]
    assert {p for p, _ in by_ip[other_ip]} == {OTHER}
    assert all(r["refs"] == [] for r in rows if r["client_ip"] == other_ip)
    assert any(r["refs"] == [REF] and r["record_ids"] for r in rows if r["client_ip"] == subject_ip)
    archived = b"".join(bytes(rec.data) for rec in records(lbm.data_dir, identity))
    assert b"/subject-secret-path" in archived and b"/subject-plain-path" in archived
    assert b"other-secret-path" not in archived and b"other-plain-path" not in archived
    for path in lbm.data_dir.rglob("*"):  # the non-subject's paths are nowhere in the data dir
        if path.is_file():
            raw = path.read_bytes()
            assert b"other-secret-path" not in raw and b"other-plain-path" not in raw, path
    assert "other-secret-path" not in out + err


def _udp_reaches_server(topo: Topology, src: str) -> bool:
    listener = subprocess.Popen(
        [*topo.exec(topo.server), sys.executable, "-c",
         "import socket,sys\n"
         "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((sys.argv[1],443))\n"
         "print('ready',flush=True);s.settimeout(2)\n"
         "try:\n  s.recvfrom(100);print('got')\nexcept OSError:\n  print('none')\n",
         topo.server_ip],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    subprocess.run(
        [*topo.exec(topo.client), sys.executable, "-c",
         "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "s.bind((sys.argv[1],0))\nfor _ in range(3): s.sendto(b'quic',(sys.argv[2],443))\n",
         src, topo.server_ip],
        check=True, timeout=20,
    )  # fmt: skip
    out, _ = listener.communicate(timeout=20)
    return out.strip() == "got"

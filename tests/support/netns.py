"""A network namespace with a veth pair, for live-capture tests (DECISIONS.md, Wave 2).

`veth_namespace(prefix)` makes namespace PREFIXPID holding `lbm-tx` <-> `lbm-rx`, both up, with no
addresses and no IPv6 (so the kernel stays silent on them), yields its name and deletes it. Traffic
replayed into `lbm-tx` appears on `lbm-rx` and never leaves the namespace. Skips the test when
namespaces cannot be made here.

`gateway_topology(prefix)` makes three namespaces (clients, gateway, server) routed through the
gateway, whose `redirect(PORT)` installs a transparent proxy's nftables rules (TCP 80/443 to
PORT, UDP 443 dropped): the web transparent-mode test and the deployment test use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TX, RX = "lbm-tx", "lbm-rx"


def sh(*args: str, timeout: float = 60) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=timeout)


@contextmanager
def veth_namespace(prefix: str) -> Iterator[str]:
    name = f"{prefix}{os.getpid()}"
    try:
        sh("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        ns = ("ip", "netns", "exec", name)
        sh(*ns, "ip", "link", "add", TX, "type", "veth", "peer", "name", RX)
        for dev in (TX, RX):
            sh(*ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh(*ns, "ip", "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


# -- a client, a gateway and a server namespace (transparent proxy tests; web-auth, issue 14) ----

CLIENT_NET, SERVER_NET = "10.201.1", "10.201.2"


@dataclass(frozen=True)
class Topology:
    """Three namespaces: clients -- gateway -- server, routed through the gateway.

    `client` holds `client_ips` on `c-g` (default route via the gateway's `gateway_client_ip`),
    `gateway` forwards between `g-c` and `g-s` (ip_forward on), `server` holds `server_ip` on
    `s-g` (default route via `gateway_server_ip`). `redirect(port)` adds the gateway's nftables
    rules of a transparent proxy: TCP 80/443 arriving from the clients `redirect to :PORT`, UDP
    443 from the clients dropped (QUIC falls back to TCP)."""

    client: str
    gateway: str
    server: str
    client_ips: tuple[str, ...]
    gateway_client_ip: str = f"{CLIENT_NET}.1"
    gateway_server_ip: str = f"{SERVER_NET}.1"
    server_ip: str = f"{SERVER_NET}.2"

    @staticmethod
    def exec(ns: str) -> list[str]:
        """The argv prefix running a command in namespace `ns`."""
        return ["ip", "netns", "exec", ns]

    def redirect(self, port: int, dports: tuple[int, ...] = (80, 443)) -> None:
        ports = ", ".join(str(p) for p in dports)
        rules = (
            "table ip lbm_gw {\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname "g-c" tcp dport {{ {ports} }} redirect to :{port}\n'
            "  }\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            '    iifname "g-c" udp dport 443 drop\n'
            "  }\n"
            "}\n"
        )
        subprocess.run(
            [*self.exec(self.gateway), "nft", "-f", "-"],
            input=rules.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )


@contextmanager
def gateway_topology(prefix: str = "lbm", clients: int = 2) -> Iterator[Topology]:
    """Make the three namespaces (names PREFIX{c,g,s}PID) and their veth pairs; remove them
    afterwards. Skips the test when namespaces or nftables are not available."""
    pid = os.getpid()
    names = (f"{prefix}c{pid}", f"{prefix}g{pid}", f"{prefix}s{pid}")
    made: list[str] = []
    try:
        for name in names:
            # a namespace left by a killed run of a process with this pid: not ours to keep
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
            try:
                sh("ip", "netns", "add", name)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
            made.append(name)
        client, gateway, server = names
        topo = Topology(client, gateway, server,
                        tuple(f"{CLIENT_NET}.{2 + i}" for i in range(clients)))  # fmt: skip
        g = Topology.exec(gateway)
        sh(*g, "ip", "link", "add", "g-c", "type", "veth", "peer", "name", "c-g", "netns", client)
        sh(*g, "ip", "link", "add", "g-s", "type", "veth", "peer", "name", "s-g", "netns", server)
        for ns, devs in ((client, ("c-g",)), (gateway, ("g-c", "g-s")), (server, ("s-g",))):
            run = Topology.exec(ns)
            sh(*run, "ip", "link", "set", "lo", "up")
            for dev in devs:
                sh(*run, "sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                sh(*run, "ip", "link", "set", dev, "up")
        sh(*g, "ip", "addr", "add", f"{topo.gateway_client_ip}/24", "dev", "g-c")
        sh(*g, "ip", "addr", "add", f"{topo.gateway_server_ip}/24", "dev", "g-s")
        sh(*g, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        c = Topology.exec(client)
        for ip in topo.client_ips:
            sh(*c, "ip", "addr", "add", f"{ip}/24", "dev", "c-g")
        sh(*c, "ip", "route", "add", "default", "via", topo.gateway_client_ip)
        s = Topology.exec(server)
        sh(*s, "ip", "addr", "add", f"{topo.server_ip}/24", "dev", "s-g")
        sh(*s, "ip", "route", "add", "default", "via", topo.gateway_server_ip)
        try:
            sh(*g, "nft", "list", "ruleset")
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"nftables not usable here: {exc}")
        yield topo
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


# An HTTP (80) and HTTPS (443) server for the "internet" namespace: argv IP CERT KEY; prints
# "ready", answers "hello PATH", stops when stdin closes.
WEB_SERVER = textwrap.dedent(
    """
    import http.server, ssl, sys, threading
    ip, cert, key = sys.argv[1:4]

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = ("hello " + self.path).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    plain = http.server.ThreadingHTTPServer((ip, 80), H)
    secure = http.server.ThreadingHTTPServer((ip, 443), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    for s in (plain, secure):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    """
)

# The SHA-256 of the certificate a client in the client namespace is shown for HOST on 443.
PEER_CERT = textwrap.dedent(
    """
    import hashlib, socket, ssl, sys
    src, dst, name, cafile = sys.argv[1:5]
    sock = socket.create_connection((dst, 443), timeout=10, source_address=(src, 0))
    ctx = ssl.create_default_context(cafile=cafile)
    with ctx.wrap_socket(sock, server_hostname=name) as tls:
        print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
    """
)


def peer_cert(topo: Topology, src: str, host: str, cafile: Path) -> str:
    out = subprocess.run(
        [*topo.exec(topo.client), sys.executable, "-c", PEER_CERT, src, topo.server_ip, host,
         str(cafile)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()

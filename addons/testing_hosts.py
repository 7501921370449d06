"""`[testing] hosts`: connect to a fixed IP for a name instead of resolving it (tests only).

Tests cannot make names resolve here, so "www.example.test=127.0.0.1" sends connections for
that name to 127.0.0.1 (same port). The name stays the TLS SNI and the name the upstream
certificate is verified against; only the socket address changes. Honoured only when the
configuration allows the fake clock (`[testing] fake_clock = true`): the daemon passes an empty
map otherwise, so a live gateway always resolves names itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy.proxy import server_hooks


def parse_hosts(items: Iterable[str]) -> dict[str, str]:
    """{"name": "ip"} from "name=ip" strings (ValueError naming a bad item)."""
    import ipaddress

    hosts: dict[str, str] = {}
    for item in items:
        name, sep, ip = item.partition("=")
        name, ip = name.strip().lower().rstrip("."), ip.strip()
        if not sep or not name:
            raise ValueError(f"{item!r}: expected NAME=IP")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{item!r}: {ip!r} is not an IP address") from None
        hosts[name] = ip
    return hosts


class TestingHosts:
    """Rewrites the upstream address of connections to names in the map."""

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = {k.lower(): v for k, v in hosts.items()}

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        address = data.server.address
        if not self.hosts or not address:
            return
        ip = self.hosts.get(str(address[0]).lower().rstrip("."))
        if ip is not None:
            if data.server.sni is None:
                data.server.sni = str(address[0])
            data.server.address = (ip, address[1])

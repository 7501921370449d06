"""The nftables ruleset of transparent interception, in its own table `inet lbm`.

`render(spec)` is pure: from the inside interface, the force's client networks and the proxy's
port it writes a table that

- redirects TCP 80 and 443 arriving on the inside interface from the client networks to the
  proxy's transparent port (`redirect to :PORT`: the packet's destination becomes the inside
  interface's own address, and the proxy reads the original one with SO_ORIGINAL_DST);
  with scope `subjects`, only from addresses in the sets `subjects4`/`subjects6`, which
  `lbm gateway scope-sync` keeps equal to the current addresses of web subjects;
- drops UDP 443 forwarded from the client networks (QUIC), so browsers fall back to TCP;
- leaves everything else alone (SMTP goes to the relay by the force's mail routing, not here).

Everything lives in one table the gateway owns, so `remove()` (delete the table) restores the
ruleset exactly as it was before `apply()`. `apply()` replaces the table atomically (one `nft -f`
transaction), so applying twice is safe and there is never a moment with half a ruleset.
The printed ruleset never holds a subject's address: set elements are loaded separately.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

TABLE = "lbm"
FAMILY = "inet"
SET4, SET6 = "subjects4", "subjects6"
WEB_PORTS = (80, 443)
QUIC_PORT = 443
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
NFT_TIMEOUT = 30.0


class RulesError(Exception):
    """The configuration cannot make a ruleset, or nft refused it."""


@dataclass(frozen=True)
class RuleSpec:
    interface: str
    networks: tuple[str, ...]
    port: int
    scope: str = "all"  # "all" | "subjects"

    def __post_init__(self) -> None:
        if not IFNAME_RE.fullmatch(self.interface):
            raise RulesError(
                f"[gateway] inside_interface {self.interface!r}: must be an interface name "
                "(letters, digits, '_.-', at most 15 characters)"
            )
        if not self.networks:
            raise RulesError("[gateway] inside_networks is empty: name the force's client networks")
        for net in self.networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise RulesError(
                    f"[gateway] inside_networks: {net!r} is not an IP network"
                ) from None
        if not 0 < self.port < 65536:
            raise RulesError(f"proxy port {self.port}: not a TCP port")
        if self.scope not in ("all", "subjects"):
            raise RulesError(f"[web] transparent_scope {self.scope!r}: must be all or subjects")

    def split(self) -> tuple[list[str], list[str]]:
        """The client networks by family, normalised (host bits cleared)."""
        nets = [ipaddress.ip_network(n, strict=False) for n in self.networks]
        return (
            [str(n) for n in nets if n.version == 4],
            [str(n) for n in nets if n.version == 6],
        )


def render(spec: RuleSpec) -> str:
    """The table `inet lbm` as an nft script (no set elements)."""
    v4, v6 = spec.split()
    iif = f'iifname "{spec.interface}"'
    ports = ", ".join(str(p) for p in WEB_PORTS)
    lines = [
        f"table {FAMILY} {TABLE} {{",
        '\tcomment "lbm-gateway transparent interception: lbm gateway rules --remove deletes it"',
    ]
    if spec.scope == "subjects":
        lines += [
            f"\tset {SET4} {{ type ipv4_addr; }}",
            f"\tset {SET6} {{ type ipv6_addr; }}",
        ]
    redirect, drop = [], []
    for family, nets, subject_set in (("ip", v4, SET4), ("ip6", v6, SET6)):
        if not nets:
            continue
        match = f"{iif} {family} saddr {{ {', '.join(nets)} }}"
        only = f" {family} saddr @{subject_set}" if spec.scope == "subjects" else ""
        redirect.append(f"\t\t{match}{only} tcp dport {{ {ports} }} redirect to :{spec.port}")
        drop.append(f"\t\t{match} udp dport {QUIC_PORT} drop")
    lines += [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *redirect,
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        *drop,
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def elements_script(addresses: Iterable[str]) -> str:
    """An nft script replacing both subject sets' contents in one transaction."""
    v4: list[str] = []
    v6: list[str] = []
    for text in sorted(set(addresses)):
        addr = ipaddress.ip_address(text)  # ValueError for anything else: never into nft
        (v4 if addr.version == 4 else v6).append(str(addr))
    lines = []
    for name, members in ((SET4, v4), (SET6, v6)):
        lines.append(f"flush set {FAMILY} {TABLE} {name}")
        if members:
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ {', '.join(members)} }}")
    return "\n".join(lines) + "\n"


def _nft(*args: str, script: str | None = None) -> str:
    exe = shutil.which("nft")
    if exe is None:
        raise RulesError("nft not found (install nftables)")
    try:
        proc = subprocess.run(
            [exe, *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise RulesError(f"nft {' '.join(args)}: no answer within {NFT_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        # nft echoes the offending script line: keep only its first message line, which
        # names the error, never set elements (addresses) of the script
        first = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
        raise RulesError(f"nft {' '.join(args)}: {first}")
    return proc.stdout


def present() -> bool:
    """Whether the table `inet lbm` exists (RulesError when nft cannot tell: not installed,
    no permission)."""
    listing = json.loads(_nft("-j", "list", "tables", FAMILY))
    return any(item.get("table", {}).get("name") == TABLE for item in listing.get("nftables", []))


def apply(spec: RuleSpec, addresses: Iterable[str] = ()) -> None:
    """Load (or atomically replace) the table; with scope `subjects`, fill the sets too."""
    script = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n" + render(spec)
    if spec.scope == "subjects":
        script += elements_script(addresses)
    _nft("-f", "-", script=script)


def remove() -> bool:
    """Delete the table; False when it was not there (nothing changed)."""
    if not present():
        return False
    _nft("delete", "table", FAMILY, TABLE)
    return True


def sync_sets(addresses: Iterable[str]) -> None:
    """Make both subject sets hold exactly `addresses` (one transaction)."""
    _nft("-f", "-", script=elements_script(addresses))


def set_members() -> set[str]:
    """The addresses in both subject sets now (to notice a set emptied behind our back)."""
    members: set[str] = set()
    for name in (SET4, SET6):
        data = json.loads(_nft("-j", "list", "set", FAMILY, TABLE, name))
        for item in data.get("nftables", []):
            for elem in item.get("set", {}).get("elem", []) or []:
                if isinstance(elem, str):
                    members.add(elem)
                elif isinstance(elem, dict) and "prefix" in elem:
                    members.add(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
    return members

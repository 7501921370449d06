"""A network namespace with a veth pair, for live-capture tests (DECISIONS.md, Wave 2).

`veth_namespace(prefix)` makes namespace PREFIXPID holding `lbm-tx` <-> `lbm-rx`, both up, with no
addresses and no IPv6 (so the kernel stays silent on them), yields its name and deletes it. Traffic
replayed into `lbm-tx` appears on `lbm-rx` and never leaves the namespace. Skips the test when
namespaces cannot be made here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

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

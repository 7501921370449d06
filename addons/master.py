"""The embedded mitmproxy: a `Master` with mitmproxy's proxy addons and ours, nothing else.

No Dumper, no termlog, no ErrorCheck (which would exit the process on a start-up log line), no
flow storage. mitmproxy's addons first (core, proxy auth, proxy server, next layer, TLS config,
h2c refusal), then ours in the contract's order: limits and the testing host map (connection
plumbing), Identity, Notice, Decision, Archiver, Metadata.

`ProxyRuntime` wraps the running master for the daemon: `start()` binds the listeners and
returns the bound addresses; `stop_listening()` closes them (mitmproxy's `shutdown()` alone
leaves the listening socket open); `close_connections()` closes every client connection;
`stop()` ends the master. Build it inside a coroutine: mitmproxy needs the running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import options as mitm_options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyauth, proxyserver, tlsconfig
from mitmproxy.master import Master

from addons import cancel, logfilter


@dataclass(frozen=True)
class ProxySettings:
    """What the daemon tells mitmproxy (already validated by the config schema)."""

    mode: str  # "explicit" | "transparent"
    listen_host: str
    listen_port: int
    confdir: Path  # the interception CA, mitmproxy confdir style (mitmproxy-ca.pem, ...)
    trust_file: Path | None = None  # certifi's bundle plus `[web] upstream_ca_file`, or None


def trust_bundle(extra_ca_file: Path, out: Path) -> Path:
    """Write certifi's CA bundle plus `extra_ca_file` to `out`: mitmproxy's
    `ssl_verify_upstream_trusted_ca` replaces the default anchors, we only add to them."""
    data = Path(certifi.where()).read_bytes() + b"\n" + extra_ca_file.read_bytes()
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


class ProxyRuntime:
    """A running embedded mitmproxy (see the module docstring)."""

    def __init__(self, settings: ProxySettings, ours: Sequence[Any]) -> None:
        opts = mitm_options.Options()
        self.master = Master(opts, event_loop=asyncio.get_running_loop())
        self.master.addons.add(
            core.Core(),
            proxyauth.ProxyAuth(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            disable_h2c.DisableH2C(),
        )
        self.master.addons.add(*ours)
        updates: dict[str, Any] = {
            "mode": ["regular" if settings.mode == "explicit" else "transparent"],
            "listen_host": settings.listen_host,
            "listen_port": settings.listen_port,
            "confdir": str(settings.confdir),
            "ssl_insecure": False,  # upstream certificates are always verified
            "connection_strategy": "eager",
            "websocket": True,
            "http2": True,
        }
        if settings.trust_file is not None:
            updates["ssl_verify_upstream_trusted_ca"] = str(settings.trust_file)
        opts.update(**updates)
        logfilter.guard_handlers()
        self._task: asyncio.Task[None] | None = None

    @property
    def proxyserver(self) -> proxyserver.Proxyserver:
        ps = self.master.addons.get("proxyserver")
        assert isinstance(ps, proxyserver.Proxyserver)
        return ps

    async def start(self, timeout: float = 30.0) -> list[tuple[str, int]]:
        """Run the master; return the bound (host, port) pairs once listening."""
        self._task = asyncio.create_task(self.master.run(), name="mitmproxy master")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            addrs = self.proxyserver.listen_addrs()
            if addrs:
                return [(str(a[0]), int(a[1])) for a in addrs]
            if self._task.done():
                self._task.result()
                raise RuntimeError("the proxy stopped before listening")
            if loop.time() > deadline:
                raise RuntimeError("the proxy did not start listening in time")
            await asyncio.sleep(0.02)

    async def stop_listening(self) -> None:
        """Close the listening sockets (new connections are refused from here on)."""
        ps = self.proxyserver
        await ps.servers.update([])

    def open_connections(self) -> int:
        return len(self.proxyserver.connections)

    def close_connections(self) -> int:
        closed = 0
        for cid in list(self.proxyserver.connections):
            if isinstance(cid, str) and cancel.close_client(cid):
                closed += 1
        return closed

    async def stop(self) -> None:
        """End the master (its `done` hooks run)."""
        self.master.shutdown()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

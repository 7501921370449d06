"""A real mitmproxy 11 `Master` run in a thread of the test process, with chosen addons after
mitmproxy's own proxy addons (core, proxyserver, next_layer, tlsconfig), listening on loopback.

For addon tests that need a real proxy and real clients (curl) but not the whole `lbm proxy run`
daemon (web-core's), e.g. `Identity` and `Notice`. Also a small plain-HTTP upstream that answers
every request with the request head it received, as JSON (which headers reached it).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mitmproxy import master, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig


class InprocProxy:
    def __init__(self, addons: Sequence[Any], confdir: Path, **opts: Any) -> None:
        self.addons = list(addons)
        self.confdir = confdir
        self.opts = opts
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: master.Master | None = None
        self._server: proxyserver.Proxyserver | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        opts = options.Options(listen_host="127.0.0.1", listen_port=0, confdir=str(self.confdir))
        m = master.Master(opts)
        self._server = proxyserver.Proxyserver()
        m.addons.add(core.Core(), self._server, next_layer.NextLayer(), tlsconfig.TlsConfig())
        m.addons.add(*self.addons)
        if self.opts:
            opts.update(**self.opts)
        self._master = m
        await m.run()

    def start(self, timeout: float = 15.0) -> InprocProxy:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"proxy failed to start: {self._error!r}")
            if self._server is not None:
                addrs = self._server.listen_addrs()
                if addrs:
                    self.port = int(addrs[0][1])
                    return self
            time.sleep(0.02)
        raise RuntimeError("proxy did not start listening")

    def stop(self) -> None:
        if self._loop is not None and self._master is not None:
            self._loop.call_soon_threadsafe(self._master.shutdown)
        self._thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def running_proxy(addons: Sequence[Any], confdir: Path, **opts: Any) -> Iterator[InprocProxy]:
    proxy = InprocProxy(addons, confdir, **opts).start()
    try:
        yield proxy
    finally:
        proxy.stop()


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        type(self).seen.append({"path": self.path, "headers": dict(self.headers.items())})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def echo_upstream() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A plain-HTTP server on 127.0.0.1 answering GET with the request head it received;
    yields (port, list of request heads seen)."""
    seen: list[dict[str, Any]] = []
    handler = type("Echo", (_EchoHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()

"""`Notice`: the proxy answers `[notice] host` itself with the acceptable-use notice page.

Plain HTTP (`GET http://NOTICE/`) and HTTPS (`CONNECT NOTICE:443`, then TLS with a certificate
from the interception CA). No upstream exists for that name and none is contacted: the CONNECT
is answered here (so mitmproxy's eager connection strategy opens nothing), the TLS handshake is
told not to reach a server first, and every request is answered at `requestheaders`. The
Decision addon (web-core) intercepts this name for everybody, asking `Notice.is_notice_host` or
its own copy of the name, and archives nothing for it (the page is ours, not a subject's
traffic); metadata rows are written as for any request.

It also answers `/lbm-notice` on the proxy's own address (any address of this machine, as a
browser reaches it directly or a transparent redirect delivers it): `http://GATEWAY:PORT/
lbm-notice`, so a client without DNS for the notice host still finds the notice.

The page carries the notice text and version, HTML-escaped, with headers that keep it out of
caches and stop it running anything (`Content-Security-Policy: default-src 'none'`).
"""

from __future__ import annotations

import functools
import html
import ipaddress
import socket
import time

from mitmproxy import http, tls

VERSION_HEADER = "X-LBM-Notice-Version"
NOTICE_PATH = "/lbm-notice"


@functools.lru_cache(maxsize=256)
def is_local_address(host: str) -> bool:
    """`host` is `localhost` or an IP address of this machine (one it can bind to)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: only the configured notice host is answered by name
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def is_own_notice_path(flow: http.HTTPFlow) -> bool:
    """A request for `/lbm-notice` on one of this machine's own addresses."""
    return flow.request.path.split("?", 1)[0] == NOTICE_PATH and is_local_address(flow.request.host)


def normalise_host(name: str) -> str:
    """Lower case, no trailing dot, no port, no IPv6 brackets."""
    host = name.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def render_page(text: str, version: str) -> bytes:
    body = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        "<title>Acceptable-use notice</title></head>\n"
        "<body><h1>Acceptable-use notice</h1>\n"
        f"<p>{html.escape(text)}</p>\n"
        f'<p>Notice version: <span id="version">{html.escape(version)}</span></p>\n'
        "</body></html>\n"
    )
    return body.encode("utf-8")


class Notice:
    """Answers requests for the notice host; leaves every other flow alone."""

    def __init__(self, host: str, text: str, version: str) -> None:
        self.host = normalise_host(host)
        self.text = text
        self.version = version
        self.page = render_page(text, version)
        self.served = 0

    def is_notice_host(self, name: str | None) -> bool:
        return bool(name) and normalise_host(name or "") == self.host

    def response(self, method: str = "GET") -> http.Response:
        headers = {
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'",
            "X-Content-Type-Options": "nosniff",
            VERSION_HEADER: self.version,
        }
        if method not in ("GET", "HEAD"):
            return http.Response.make(405, b"", {**headers, "Allow": "GET, HEAD"})
        resp = http.Response.make(200, self.page, headers)
        if method == "HEAD":
            resp.content = b""
            resp.headers["Content-Length"] = str(len(self.page))
        return resp

    # -- hooks -------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self.is_notice_host(flow.request.host):
            return  # refused already (e.g. 407), or not ours
        # answer the CONNECT ourselves: with a response set, mitmproxy opens no upstream
        now = time.time()
        flow.response = http.Response(
            flow.request.data.http_version, 200, b"Connection established",
            http.Headers(), b"", None, now, now,
        )  # fmt: skip

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.is_notice_host(data.client_hello.sni):
            data.establish_server_tls_first = False  # there is no server

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if (
            self.is_notice_host(flow.request.pretty_host)
            or self.is_notice_host(flow.client_conn.sni)
            or is_own_notice_path(flow)
        ):
            flow.response = self.response(flow.request.method)
            self.served += 1

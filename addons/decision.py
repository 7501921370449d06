"""`Decision`: open a connection only for a subject of an active authorisation.

Per connection, at the ClientHello (`next_layer`, where the layer that follows is chosen):
`decide(snapshot, principal, "web", at, server_name=SNI)`. Only `Decision.full` is intercepted;
everything else is relayed unopened by `CountingTCPLayer`, so the client sees the real server's
certificate and we see only sizes. No principal (unauthenticated, unresolved) is never a
subject. Exceptions, in this order: the notice host is always answered by us (never a subject's
archive); a client that refused our certificate for that server within the pinned-client window
is passed (`error_kind="pinned_fallback"` on the passed row).

Per request (`requestheaders`), a `FlowState` with the refs whose archive receives THIS request:
on an intercepted connection the Host/`:authority` is decided again (HTTP/2 coalescing can
carry a do-not-decrypt host on a connection opened for another: `421 Misdirected Request`,
nothing archived); a subject no longer covered (cancelled, expired) gets no record and the
connection is closed. Plain HTTP is decided per request with its Host.

Snapshot changes (`on_snapshot`, called on the event loop) close open intercepted connections of
subjects no longer covered, so cancellation and expiry take effect on open connections too.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from mitmproxy import connection, http, tls
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers import ClientTLSLayer, ServerTLSLayer
from mitmproxy.proxy.layers.tls import parse_client_hello

from addons import cancel
from addons.notice import is_own_notice_path
from addons.passthrough import CountingTCPLayer
from addons.pinned import PinnedClients
from addons.state import FLOW_KEY, ConnState, FlowState, conn_state, open_states
from appliance.policy.decide import decide
from appliance.policy.snapshot import Snapshot
from store.clock import Clock

logger = logging.getLogger("lbm.web")

MISDIRECTED = 421


def _host_of(authority: str) -> str:
    """The host part of a Host/authority value, lower case, without port or brackets."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class Decision:
    """Decides what is opened and what is archived (see the module docstring)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        clock: Clock,
        *,
        notice_host: str | None = None,
        pinned: PinnedClients | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.clock = clock
        self.notice_host = _host_of(notice_host) if notice_host else None
        self.pinned = pinned or PinnedClients(0)
        # requests in flight per client connection whose content is being archived: a
        # cancellation narrows their refs at once (the Archiver reads FlowState.refs each time)
        self._live: dict[str, dict[str, FlowState]] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self.clock.now().astimezone(UTC)

    def _is_notice(self, host: str | None) -> bool:
        return (
            bool(host)
            and self.notice_host is not None
            and _host_of(host or "") == (self.notice_host)
        )

    # -- connections -----------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        state = conn_state(client)
        if not state.started:
            state.started = self._now().timestamp()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Keep the host the client asked to CONNECT to: the tunnel's real destination, which
        decides together with the SNI (see `_decide_connection`)."""
        conn_state(flow.client_conn).connect_host = flow.request.host

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """A client's TLS handshake: decide, and pass through (counting) unless a subject."""
        chosen = nextlayer.layer
        if nextlayer.data_client():
            conn_state(nextlayer.context.client).sent_data = True
        if not (
            isinstance(chosen, ServerTLSLayer) and isinstance(chosen.child_layer, ClientTLSLayer)
        ):
            return
        context = nextlayer.context
        if context.client.tls_established:  # TLS inside TLS: the outer one was decided
            return
        state = conn_state(context.client)
        if state.decision is not None:
            return
        try:
            hello = parse_client_hello(nextlayer.data_client())
        except ValueError:
            hello = None  # not a ClientHello we can read: mitmproxy's TLS layer rejects it
        sni = hello.sni if hello is not None else None
        if context.server.address:
            state.host, state.port = str(context.server.address[0]), int(context.server.address[1])
        if self._decide_connection(state, sni or state.host) == "passed":
            nextlayer.layer = CountingTCPLayer(context, state)

    def _decide_connection(self, state: ConnState, server_name: str | None) -> str:
        state.server_name = server_name
        now = self._now()
        if self._is_notice(server_name):
            state.decision, state.notice = "intercepted", True
            return "intercepted"
        snapshot = self.snapshot()
        d = decide(snapshot, state.principal, "web", now, server_name=server_name)
        target = _connect_name(state.connect_host)
        if not d.full and target and server_name and target != server_name.lower():
            # explicit mode: the CONNECT target is the server the proxy really connects to. A
            # subject naming a do-not-decrypt server in the SNI of a tunnel to another host
            # (`CONNECT other:443` + SNI `www.nhs.uk`) must not slip past: the target decides
            # too, and each request is then re-checked by its Host (421 for a listed one)
            by_target = decide(snapshot, state.principal, "web", now, server_name=target)
            if by_target.full:
                d = by_target
        state.do_not_decrypt = d.do_not_decrypt
        if (
            d.full
            and server_name
            and self.pinned.pass_through(state.client_ip, server_name, now.timestamp())
        ):
            state.decision, state.error_kind = "passed", "pinned_fallback"
            return "passed"
        if d.full:
            state.decision, state.refs = "intercepted", d.refs
            return "intercepted"
        state.decision = "passed"
        return "passed"

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Safety net: a TLS handshake `next_layer` did not decide is passed unless a subject's
        (unopened, its bytes not counted)."""
        state = conn_state(data.context.client)
        if (
            state.decision is None
            and self._decide_connection(state, data.client_hello.sni) == "passed"
        ):
            data.ignore_connection = True

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """A subject's client refused our certificate (pinned app): record it, and let the
        next connection to that server within the window pass."""
        state = conn_state(data.context.client)
        if state.decision == "intercepted" and not state.notice:
            state.error_kind = "client_tls_refused"
            if state.server_name:
                self.pinned.refused(state.client_ip, state.server_name, self._now().timestamp())

    # -- requests --------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = conn_state(flow.client_conn)
        now = self._now()
        fs = FlowState(request_id=uuid.uuid4().hex, started=now.timestamp())
        flow.metadata[FLOW_KEY] = fs
        authority = flow.request.pretty_host
        if self._is_notice(authority) or state.notice or is_own_notice_path(flow):
            return  # the notice page: answered by us, never archived
        d = decide(self.snapshot(), state.principal, "web", now, server_name=_host_of(authority))
        if flow.client_conn.tls:
            if state.decision != "intercepted":
                return
            if d.do_not_decrypt and not d.full:
                # a do-not-decrypt authority on a connection we opened (HTTP/2 coalescing, or a
                # Host differing from the SNI): never archived; the client retries on a new
                # connection, which is then passed through unopened
                flow.response = http.Response.make(
                    MISDIRECTED, b"", {"Content-Type": "text/plain", "Connection": "close"}
                )
                return
            if not d.full:
                # the subject is no longer covered (cancelled or expired): nothing recorded,
                # and the connection closes
                flow.kill()
                cancel.close_client(flow.client_conn.id)
                return
            fs.refs = d.refs
            self._track(flow, fs)
            return
        fs.refs = d.refs if d.full else ()  # plain HTTP: decided per request
        if fs.refs:
            self._track(flow, fs)

    def _track(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        self._live.setdefault(flow.client_conn.id, {})[fs.request_id] = fs

    def _untrack(self, flow: http.HTTPFlow) -> None:
        fs = flow.metadata.get(FLOW_KEY)
        live = self._live.get(flow.client_conn.id)
        if live is not None and isinstance(fs, FlowState):
            live.pop(fs.request_id, None)
            if not live:
                del self._live[flow.client_conn.id]

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._untrack(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._untrack(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._untrack(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._live.pop(client.id, None)

    # -- policy changes --------------------------------------------------------------------
    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Close open intercepted connections whose subject is no longer covered (call on the
        event loop: `loop.call_soon_threadsafe(decision.on_snapshot, snapshot)`)."""
        now = self._now()
        for state in open_states():
            live = self._live.get(state.uid, {})
            if live and state.decision != "intercepted":  # plain HTTP being archived
                d = decide(snapshot, state.principal, "web", now)
                for fs in live.values():
                    fs.refs = tuple(r for r in fs.refs if r in d.refs)
                continue
            if state.decision != "intercepted" or state.notice or not state.refs:
                continue
            d = decide(snapshot, state.principal, "web", now, server_name=state.server_name)
            for fs in live.values():  # stop archiving for cancelled refs at once
                fs.refs = tuple(r for r in fs.refs if r in d.refs)
            if d.full:
                state.refs = d.refs
                continue
            state.refs = ()
            # debug, never the journal at INFO: an operator reading it would learn that
            # someone was being recorded, and when their authorisation ended
            logger.debug("closing an intercepted connection: its authorisation ended")
            cancel.close_client(state.uid)


def _connect_name(host: str | None) -> str | None:
    """The CONNECT target's host name (lower case), or None for an address (transparent mode's
    original destination) or no target."""
    if not host:
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower().rstrip(".")
    return None

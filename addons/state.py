"""Per-connection and per-request state the web addons share (`ConnState`, `FlowState`).

mitmproxy addons share data through the connection and the flow, not imports of each other:
`Identity` fills who the client is, `Decision` what we do with its connections and requests,
`Archiver` the record ids, `Metadata` reads it all to write one row. A `ConnState` lives from the
client's first hook to `client_disconnected` (`forget`); a `FlowState` lives in
`flow.metadata["lbm"]`.

Nothing here may hold content of a non-subject: only names, addresses, decisions and ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mitmproxy.connection
import mitmproxy.flow

FLOW_KEY = "lbm"


@dataclass
class ConnState:
    """One per client connection."""

    uid: str  # the `uid` metadata column of the connection's rows
    client_ip: str
    client_port: int
    principal: str | None = None  # set by Identity; None = never a subject
    proxy_user: str | None = None
    identified: bool = False
    decision: str | None = None  # "intercepted" | "passed" | None (not decided yet / plain HTTP)
    refs: tuple[str, ...] = ()  # refs the connection was intercepted for
    server_name: str | None = None
    do_not_decrypt: bool = False
    error_kind: str | None = None
    # beyond the contract (web-core): what the connection-level rows need
    started: float = 0.0  # POSIX seconds (appliance clock) the client connected
    host: str | None = None  # CONNECT target / original destination host, else None
    connect_host: str | None = None  # the CONNECT request's host, as the client named it
    port: int | None = None
    server_ip: str | None = None  # upstream peer of a passed-through tunnel
    server_port: int | None = None
    bytes_up: int = 0  # passed-through tunnel bytes, client -> server
    bytes_down: int = 0  # passed-through tunnel bytes, server -> client
    rows: int = 0  # request rows written for this connection
    notice: bool = False  # intercepted only to answer the notice host
    method: str | None = None  # "CONNECT" once the client asked for a tunnel
    sent_data: bool = False  # the client sent bytes (a connection row without a request: bad)


@dataclass
class FlowState:
    """flow.metadata["lbm"], set by Decision at requestheaders."""

    request_id: str
    started: float  # POSIX seconds from the appliance clock (fake clock honoured)
    refs: tuple[str, ...] = ()  # archive this request's content for these refs
    record_ids: list[str] = field(default_factory=list)
    archive_gap: bool = False
    # beyond the contract (web-core): counted by Metadata's stream wrappers
    bytes_up: int = 0  # request body bytes (WebSocket: client messages)
    bytes_down: int = 0  # response body bytes (WebSocket: server messages)
    error_kind: str | None = None  # a code set by an addon (e.g. authorisation_ended)
    written: bool = False  # the row has been written
    local: bool = False  # answered by an addon at requestheaders (421, 407, notice): not streamed


_CONNS: dict[str, ConnState] = {}


def conn_state(client: mitmproxy.connection.Client) -> ConnState:
    """The client's ConnState, created on first use (uid = mitmproxy's connection id)."""
    state = _CONNS.get(client.id)
    if state is None:
        host, port = _peer(client)
        state = ConnState(uid=client.id, client_ip=host, client_port=port)
        _CONNS[client.id] = state
    return state


def flow_state(flow: mitmproxy.flow.Flow) -> FlowState | None:
    """The flow's FlowState, or None before Decision has set it."""
    state = flow.metadata.get(FLOW_KEY)
    return state if isinstance(state, FlowState) else None


def forget(client: mitmproxy.connection.Client) -> None:
    """Drop the client's ConnState (at client_disconnected)."""
    _CONNS.pop(client.id, None)


def open_states() -> list[ConnState]:
    """Every ConnState of a client still connected (for closing cancelled subjects' connections)."""
    return list(_CONNS.values())


def _peer(client: mitmproxy.connection.Client) -> tuple[str, int]:
    peer = client.peername
    if not peer:
        return "", 0
    host = str(peer[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(peer[1])

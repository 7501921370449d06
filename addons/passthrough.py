"""A pass-through TCP layer that counts bytes each way and keeps nothing.

mitmproxy's `ignore_connection` swaps in `TCPLayer(ignore=True)`, which relays without firing any
hook, so a passed-through (unopened) TLS connection's size would be lost. `CountingTCPLayer` is
that same layer with two integer additions on the connection's `ConnState`; it creates no flow and
holds no message, so a non-subject's bytes are relayed, counted and forgotten (the benchmark in
`bench/bench_proxy.py` checks it stays within 0.9x of mitmdump ignoring every host).
"""

from __future__ import annotations

from mitmproxy.proxy import events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tcp import TCPLayer, TcpMessageInjected
from mitmproxy.proxy.utils import expect

from addons.state import ConnState


class CountingTCPLayer(TCPLayer):
    """Relays a TCP stream unopened, adding its sizes to `state.bytes_up`/`bytes_down`."""

    def __init__(self, context: Context, state: ConnState) -> None:
        super().__init__(context, ignore=True)
        self.state = state

    @expect(events.DataReceived, events.ConnectionClosed, TcpMessageInjected)
    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            if event.connection is self.context.client:
                self.state.bytes_up += len(event.data)
            else:
                self.state.bytes_down += len(event.data)
        return (yield from super().relay_messages(event))

"""Closing a live client connection from an addon (cancellation, expiry, limits).

mitmproxy keeps each client's `ConnectionHandler` in the proxyserver addon's `connections`
(keyed by the client connection id); closing the client's transport cancels its handler, which
then closes the server side and fires `client_disconnected` as for any other close.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx

logger = logging.getLogger("lbm.web")


def close_client(client_id: str) -> bool:
    """Close the client connection `client_id` if it is still open; True if it was."""
    master = getattr(ctx, "master", None)
    proxyserver = master.addons.get("proxyserver") if master is not None else None
    if proxyserver is None:
        return False
    handler = proxyserver.connections.get(client_id)
    if handler is None:
        return False
    try:
        handler.close_connection(handler.client)
    except KeyError:  # its transport is already gone
        return False
    return True


def open_client_ids() -> list[str]:
    """Ids of every client connection the proxy server still holds."""
    master = getattr(ctx, "master", None)
    proxyserver = master.addons.get("proxyserver") if master is not None else None
    if proxyserver is None:
        return []
    return [cid for cid in proxyserver.connections if isinstance(cid, str)]

"""`web` rows for connections that bypassed the proxy (`[web] transparent_scope = "subjects"`).

With the subjects scope, the kernel forwards everyone else's web traffic past the proxy, so the
proxy writes no `web` row for it. Capture on the inside interface still sees each connection;
`BypassedWeb` turns every ended TCP flow to port 80 or 443 opened from the internal networks into
one `web` row, `decision = "bypassed"`, from the flow's own metadata: host (TLS SNI, else the
plain-HTTP Host), method (plain HTTP only), bytes each way, duration, TLS version. Never a path,
never content: the flow row holds none.

A flow whose principal had an active `web` authorisation when it began is left out: that
connection was redirected to the proxy, which wrote its own rows (a subject's address not yet in
the redirect set at that instant then has a `flow` row only; the safe direction).

The rows go through their own `MetadataWriter("web", WRITER)` (the capture writer's name).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from appliance.policy.decide import decide
from appliance.policy.snapshot import Snapshot
from store.metadata import MetadataWriter
from store.paths import DataPaths

WEB_PORTS = {80: "http", 443: "https"}
DECISION = "bypassed"
NEEDED = (
    "ts", "uid", "principal", "client_ip", "client_port", "server_ip", "server_port", "proto",
    "duration", "orig_bytes", "resp_bytes", "local_orig", "server_name", "http_host",
    "http_method", "tls_version", "community_id",
)  # fmt: skip


def _column(value: Any) -> list[Any]:
    if isinstance(value, pa.ChunkedArray | pa.Array):
        return list(value.to_pylist())
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return list(value)


def web_rows(
    flows: dict[str, Any], snapshot: Snapshot, notice_version: str | None
) -> list[dict[str, Any]]:
    """The bypassed `web` rows for a batch of ended flows (the capture pipeline's columns)."""
    cols = {k: _column(flows[k]) for k in NEEDED if k in flows}
    n = len(cols.get("uid", ()))
    out: list[dict[str, Any]] = []
    for i in range(n):
        port = cols["server_port"][i]
        if cols["proto"][i] != "tcp" or port not in WEB_PORTS or not cols["local_orig"][i]:
            continue
        ts = cols["ts"][i]  # a UTC datetime (published batch) or microseconds
        at = ts if isinstance(ts, datetime) else datetime.fromtimestamp(int(ts) / 1e6, UTC)
        principal = cols["principal"][i]
        if principal is not None and decide(snapshot, principal, "web", at).full:
            continue  # redirected to the proxy: its rows are there
        sni = cols.get("server_name", [None] * n)[i]
        host = sni or cols.get("http_host", [None] * n)[i]
        out.append(
            {
                "ts": at,
                "uid": cols["uid"][i],
                "principal": principal,
                "client_ip": cols["client_ip"][i],
                "client_port": cols["client_port"][i],
                "server_ip": cols["server_ip"][i],
                "server_port": port,
                "request_id": cols["uid"][i],  # one row per connection
                "notice_version": notice_version,
                "scheme": "https" if sni or port == 443 else "http",
                "host": host,
                "port": port,
                "method": None if sni else cols.get("http_method", [None] * n)[i],
                "bytes_up": cols["orig_bytes"][i],
                "bytes_down": cols["resp_bytes"][i],
                "duration": cols["duration"][i],
                "server_name": sni,
                "tls_version": cols.get("tls_version", [None] * n)[i],
                "decision": DECISION,
                "do_not_decrypt": bool(host) and snapshot.is_do_not_decrypt(host),
                "refs": [],
                "record_ids": [],
                "community_id": cols["community_id"][i],
            }
        )
    return out


class BypassedWeb:
    """Writes the bypassed `web` rows of each flow batch the pipeline publishes."""

    def __init__(
        self,
        *,
        paths: DataPaths,
        gateway: str,
        writer_name: str,
        snapshot: Callable[[], Snapshot],
        notice_version: str | None,
    ) -> None:
        self.writer = MetadataWriter("web", writer_name, paths=paths, gateway=gateway)
        self.snapshot = snapshot
        self.notice_version = notice_version
        self.rows = 0

    def add(self, flows: dict[str, Any]) -> None:
        rows = web_rows(flows, self.snapshot(), self.notice_version)
        for row in rows:
            self.writer.append(row)
        self.rows += len(rows)

    def close(self) -> None:
        try:
            self.writer.flush()
        finally:
            self.writer.close()

"""Stage 4, app: the first packets of each flow -> application metadata and `dns` rows.

In: a `PacketBatch` with the flow table's assignment (packet -> slot, direction, uid).
Out: per flow slot, `service`, `server_name` (TLS SNI), `tls_version`, `http_host`,
`http_method` (`feed.APP_COLUMNS`, merged into the flow's row) and `dns` rows; and, for
`capture.subjects.gate`, whether a flow's server name is known yet (`AppFeed.name_settled`).

Threads: one `AppFeed` per capture source, on the pipeline's thread.
Bounds: only a flow's first payload packets are read (`feed.APP_BUDGET`, 16; DNS ports
`APP_BUDGET_DNS`, 64), so cost does not grow with flow size; `AppMeta` buffers at most
`meta.BUF_LIMIT` (16 KiB) per direction while a head spans segments, and at most
`meta.DNS_MAX_MESSAGES` per flow. Nothing of the URL path, other headers, bodies or
certificates is read; payload is dropped once its head is parsed.

Modules: `feed` (which packets reach the parsers; the one-packet C fast path), `scan` (that
C fast path), `meta` (heads spanning packets, STARTTLS, DNS over TCP, service guess),
`heads` (TLS ClientHello/ServerHello, HTTP Host readers), `dnsscan` (a batch's DNS messages
in one C call) and `dnsparse` (the bounded Python DNS parser it falls back to).
"""

from capture.app.feed import AppFeed
from capture.app.meta import AppMeta

__all__ = ["AppFeed", "AppMeta"]

"""Stage 3, flow: `PacketBatch`es -> connections with Zeek conn.log semantics -> `flow` rows.

In: decoded batches, in capture order, of one source.
Out: `FlowTable.add(batch)` assigns every packet its flow slot (new flows, originator
direction) and returns the flows that ended (idle, active timeout, key reuse, table full:
each counted in `FlowCounters`); `rows.Columns` gives their `flow` columns (conn.log fields,
uid, Community ID v1, TCP state and history from the C state machine; text columns
are Arrow arrays built from C-written buffers). `NetSet` says which
endpoint is internal (`[capture] internal_networks`).

Threads: one table per capture source, used from one thread; `keys_of(batch)` (columns, flow
keys and their grouping, no flow state) may be made on another, and given to `add`.
Bounds: at most `FlowConfig.max_flows` live flows (`[capture] max_flows`, about 1 KiB each);
beyond it the least recently active flow is ended early and counted. Their storage is reserved
at the start and resident only for the slots flows have used (`lazy`). Per-packet work is
array code or one C pass per batch (the TCP state machine and the counters,
`tcpstate`).

Modules: `table` (the flow table), `columns` (per-packet columns incl. tunnels' outer and
middle connections), `keys` (5-tuple hash, Zeek's server-port heuristics, uids, Community
ID), `rows` (ended flows -> columns), `tcpstate` (the C extension's loader), `slots` (per-slot
storage, slot allocation), `lazy` (storage resident only where written), `netset`.
"""

from capture.flow.columns import BatchKeys, keys_of
from capture.flow.keys import PROTO_NAMES, community_id_array, community_ids
from capture.flow.netset import NetSet
from capture.flow.rows import (
    Columns,
    addr_array,
    addr_texts,
    concat_column,
    count,
    empty_lists,
    proto_names,
    pylist,
    repeat_text,
    to_rows,
)
from capture.flow.table import FlowConfig, FlowTable

__all__ = [
    "PROTO_NAMES",
    "BatchKeys",
    "Columns",
    "FlowConfig",
    "FlowTable",
    "NetSet",
    "addr_array",
    "addr_texts",
    "community_id_array",
    "community_ids",
    "concat_column",
    "count",
    "empty_lists",
    "keys_of",
    "proto_names",
    "pylist",
    "repeat_text",
    "to_rows",
]

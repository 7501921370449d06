"""Stage 2, decode: `RawBatch` -> `capture.batch.PacketBatch`, numpy over whole batches.

In: a `RawBatch` from `capture.read` (or a capture file path, `read_batches`).
Out: a `PacketBatch`: the same frames plus one numpy column per decoded header field (link
layer, IPv4/IPv6 with extension headers, transport ports, payload offset and length, the
outermost tunnel connection in `outer_*`, a nested tunnel's middle connection in `middle`),
and a per-packet `status` saying why a packet was not decoded (counted in
`Decoder.summary`, never dropped silently).

Threads: a `Decoder` belongs to one capture source and one thread (in replay, `Prefetch`'s
producer thread).
Bounds: work is array expressions per batch; the fragment table that gives later fragments
their first fragment's ports keeps at most `max_fragments` datagrams (oldest evicted,
counted); tunnels are decapsulated `decoder.MAX_DEPTH` (2) levels deep, as Zeek does.
Payload is never joined or copied beyond the batch.

Modules: `decoder` (the steps in order), `ip` (IPv4 and IPv6 headers), `linktypes` (Ethernet,
VLAN/QinQ, MPLS, PPPoE, SLL, ...), `vntag`, `tunnels` (VXLAN, Geneve, GRE/ERSPAN, Teredo,
IP-in-IP), `frag`.
"""

from capture.decode.decoder import Decoder, decode, read_batches

__all__ = ["Decoder", "decode", "read_batches"]

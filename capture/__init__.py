"""Packet path of lbm-gateway: capture files and live traffic to flow metadata, and
subjects' packets to their authorisations' archives. One folder per stage:

    file / interface
      -> read/      pcap, pcapng, AF_PACKET ring          -> RawBatch       (batch.py)
      -> decode/    link layers, IP, tunnels, fragments   -> PacketBatch    (batch.py)
      -> flow/      flow table, Zeek conn.log semantics   -> `flow` rows
      -> app/       first packets: TLS SNI, HTTP Host, DNS -> app columns, `dns` rows
      -> subjects/  decide per packet, hold, record       -> archive records (pcapng);
                    flows past the proxy                   -> `web` rows ("bypassed")
    native/         the C helpers and their build (`python -m capture.native.build`)

`pipeline.Pipeline.feed(batch)` runs flow -> app -> subjects for replay (`replay.replay`,
which reads and decodes on a `read.Prefetch` thread) and live capture (`live.run_live`, which
reads a `read.PacketRing`); `summary.Summary` counts what a run did. `batch` (and
`tunnelchain`, a nested tunnel's middle level) is the data every stage shares, so it sits
here, not in a stage. Each stage's `__init__` states its contract (in, out, threads, bounds)
and exports what the next stage uses; a stage imports only earlier stages, `batch`,
`native` and `CaptureError`.

`capture` imports `appliance.policy` and `store`, never another channel, `appliance.cli`,
`appliance.config`, mitmproxy or aiosmtpd (import-linter, pyproject.toml). Its limits come
as constructor arguments (`[capture]` options are read by `appliance/cli/capture_cmd.py`).
"""


class CaptureError(Exception):
    """A capture file or interface cannot be read (message names the path and what is wrong).

    Never carries packet content.
    """

"""Packet path of lbm-gateway: capture files and live traffic to flow metadata.

Layout: `reader` streams pcap/pcapng records in bounded chunks into `batch.RawBatch`es;
`decode` turns a raw batch into a column-oriented `batch.PacketBatch` (numpy over the whole
batch for the common headers, a small C helper or a per-packet path only for rare cases);
`flows`, `appmeta` and `pipeline` aggregate them into the `flow` and `dns` metadata streams.

`capture` imports `appliance.policy` and `store`, never mitmproxy or aiosmtpd.
"""


class CaptureError(Exception):
    """A capture file or interface cannot be read (message names the path and what is wrong).

    Never carries packet content.
    """

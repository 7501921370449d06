"""Every file of the malformed corpus is read to the end under a time and memory bound,
without an exception escaping; bad packets and records are counted by kind."""

from __future__ import annotations

import re
import tracemalloc

import pytest
from lbm_testing import corpus_root

from capture import CaptureError
from capture.decode.decoder import Decoder, read_batches

CORPUS = corpus_root()
MALFORMED = CORPUS / "pcaps" / "malformed"
FILES = sorted(p.name for p in MALFORMED.glob("*.pcap*")) if MALFORMED.is_dir() else []


def _manifest_packet_counts() -> dict[str, int]:
    """Packet counts per malformed file from the corpus MANIFEST (dpkt/scapy counts)."""
    counts: dict[str, int] = {}
    text = (CORPUS / "MANIFEST.md").read_text()
    section = text.split("## pcaps/malformed", 1)[1].split("\n## ", 1)[0]
    header: list[str] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "pkts" in cells:
            header = cells
            continue
        m = re.fullmatch(r"`([^`]+)`", cells[0]) if cells else None
        if m and header:
            counts[m.group(1)] = int(cells[header.index("pkts")])
    return counts


# What the summary must say for files with a known defect (a subset; all are run below).
EXPECTED_KINDS = {
    "dpkt__truncated_dns_2.pcap": "truncated_record",
    "tcpdump__timestamp_invalid_micro.pcap": "bad_timestamp",
    "tcpdump__timestamp_invalid_nano.pcap": "bad_timestamp",
    "tcpdump__ipv4_invalid_hdr_length.pcap": "bad_ip_header",
    "tcpdump__LINKTYPE_IPV4_invalid.pcap": "bad_ip_version",
    "tcpdump__ipv6-bad-version.pcap": "bad_ip_version",
    "tcpdump__cve2015-0261-crash.pcap": "unsupported_linktype",
    "zeek__trunc__trunc-hdr.pcap": "truncated",
    "zeek__trunc__ip6-ext-trunc.pcap": "truncated",
    "tcpdump__ipv6-rthdr-oobr.pcap": "truncated",
    "tcpdump__ipv6_frag6_negative_len.pcap": "fragment_later",
}


@pytest.mark.skipif(not FILES, reason=f"corpus not found at {MALFORMED} (set LBM_CORPUS)")
@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", FILES)
def test_malformed_file_processed_to_the_end(name: str) -> None:
    dec = Decoder()
    tracemalloc.start()
    try:
        n = sum(len(b) for b in read_batches(MALFORMED / name, decoder=dec))
    except CaptureError as exc:  # only allowed for a broken file header, naming the file
        assert name in str(exc)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    summary = dec.summary
    print(f"{name}: {n} packets, {summary}")
    assert peak < 64 << 20
    assert n == _manifest_packet_counts()[name]
    if name in EXPECTED_KINDS:
        assert summary.get(EXPECTED_KINDS[name], 0) >= 1, summary


def test_manifest_lists_every_malformed_file() -> None:
    if not FILES:
        pytest.skip("corpus not found")
    assert set(_manifest_packet_counts()) == set(FILES)

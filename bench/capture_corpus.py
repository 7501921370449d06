"""The bench corpus looped to a size, and an independent count of a capture's mix.

Reads pcap records itself (no appliance import): little- or big-endian, micro- or nanosecond,
Ethernet only, which is what the corpus's bench captures are (../shared/corpus/MANIFEST.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
BASE_US = 1_700_000_000 * 1_000_000


def iter_records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(timestamp in microseconds, frame, wire length) of a little- or big-endian pcap
    (microsecond or nanosecond); Ethernet only."""
    with path.open("rb") as fh:
        head = fh.read(24)
        magic = head[:4]
        endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        if magic not in (
            b"\xd4\xc3\xb2\xa1",
            b"\xa1\xb2\xc3\xd4",
            b"\x4d\x3c\xb2\xa1",
            b"\xa1\xb2\x3c\x4d",
        ):
            raise SystemExit(f"bench_capture: {path}: not a pcap file")
        if struct.unpack(endian + "I", head[20:24])[0] != 1:
            raise SystemExit(f"bench_capture: {path}: link type is not Ethernet")
        rec = struct.Struct(endian + "IIII")
        while True:
            h = fh.read(16)
            if len(h) < 16:
                return
            sec, frac, cap, wire = rec.unpack(h)
            frame = fh.read(cap)
            if len(frame) < cap:
                return
            yield sec * 1_000_000 + (frac // 1000 if nano else frac), frame, wire


def _shift_addresses(frame: bytes, copy: int) -> bytes:
    """Map every IPv4/IPv6 address (source and destination alike, so both directions of a flow
    stay one flow) to another one for this copy: the address's last two bytes XOR the copy."""
    off, et = 12, frame[12:14]
    while et in (b"\x81\x00", b"\x88\xa8") and len(frame) >= off + 6:
        off += 4
        et = frame[off : off + 2]
    l3 = off + 2
    if et == b"\x08\x00" and len(frame) >= l3 + 20:
        spots = (l3 + 14, l3 + 18)
    elif et == b"\x86\xdd" and len(frame) >= l3 + 40:
        spots = (l3 + 22, l3 + 38)
    else:
        return frame
    b = bytearray(frame)
    for p in spots:
        b[p] ^= (copy >> 8) & 255
        b[p + 1] ^= copy & 255
    return bytes(b)


def corpus_files() -> list[Path]:
    corpus = Path(os.environ.get("LBM_CORPUS", ROOT.parent / "shared" / "corpus"))
    files = sorted((corpus / "pcaps" / "bench").glob("*.pcap"))
    if not files:
        raise SystemExit(f"bench_capture: no bench captures in {corpus}/pcaps/bench (LBM_CORPUS)")
    return files


def write_corpus_loop(path: Path, min_packets: int) -> None:
    """Concatenate the bench corpus captures until `min_packets`: each copy's addresses mapped
    apart, each file's times moved to follow the previous one by a second (time order holds)."""
    files = corpus_files()
    pack = struct.Struct("<IIII").pack
    total, copy, clock = 0, 0, BASE_US
    with path.open("wb") as fh:
        fh.write(PCAP_HEADER)
        while total < min_packets:
            for f in files:
                parts: list[bytes] = []
                shift = None
                last = clock
                for ts, frame, wire in iter_records(f):
                    if shift is None:
                        shift = clock - ts
                    t = max(ts + shift, BASE_US)
                    last = max(last, t)
                    fr = _shift_addresses(frame, copy) if copy else frame
                    parts.append(pack(t // 1_000_000, t % 1_000_000, len(fr), wire))
                    parts.append(fr)
                fh.write(b"".join(parts))
                total += len(parts) // 2
                clock = last + 1_000_000
            copy += 1


def count_mix(path: Path) -> dict[str, Any]:
    """An independent count of what a capture holds: packets by protocol and IP version, flows
    (bidirectional 5-tuples), TLS flows with a ClientHello, DNS flows, and the most flows in
    flight at once (between their first and last packet)."""
    n = tcp = udp = v6 = 0
    first: dict[bytes, int] = {}
    last: dict[bytes, int] = {}
    tls: set[bytes] = set()
    dns: set[bytes] = set()
    tcp_flows: set[bytes] = set()
    for ts, f, _ in iter_records(path):
        n += 1
        et = f[12:14]
        if et == b"\x08\x00":
            ihl = (f[14] & 15) * 4
            proto, a, b, l4 = f[23], f[26:30], f[30:34], 14 + ihl
        elif et == b"\x86\xdd":
            v6 += 1
            proto, a, b, l4 = f[20], f[22:38], f[38:54], 54
        else:
            continue
        if proto not in (6, 17):
            continue
        pa, pb = f[l4 : l4 + 2], f[l4 + 2 : l4 + 4]
        key = bytes([proto]) + (a + pa + b + pb if a + pa <= b + pb else b + pb + a + pa)
        if key not in first:
            first[key] = ts
        last[key] = ts
        if proto == 6:
            tcp += 1
            tcp_flows.add(key)
            p = l4 + (f[l4 + 12] >> 4) * 4
            if f[p : p + 1] == b"\x16" and f[p + 5 : p + 6] == b"\x01":
                tls.add(key)
        else:
            udp += 1
            if pa == b"\x00\x35" or pb == b"\x00\x35":
                dns.add(key)
    events = sorted([(t, 1) for t in first.values()] + [(t, -1) for t in last.values()])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    return {
        "packets": n,
        "tcp_pct": 100 * tcp / max(1, n),
        "udp_pct": 100 * udp / max(1, n),
        "ipv6_pct": 100 * v6 / max(1, n),
        "flows": len(first),
        "tcp_flows": len(tcp_flows),
        "tls_sni_flows_pct_of_tcp": 100 * len(tls) / max(1, len(tcp_flows)),
        "dns_flows": len(dns),
        "max_in_flight": peak,
    }


def mix_line(m: dict[str, Any]) -> str:
    return (
        f"mix: {m['packets']:,} packets, TCP {m['tcp_pct']:.0f}%, UDP {m['udp_pct']:.0f}%, "
        f"IPv6 {m['ipv6_pct']:.0f}%; {m['flows']:,} flows, TLS+SNI "
        f"{m['tls_sni_flows_pct_of_tcp']:.0f}% of TCP flows, DNS flows {m['dns_flows']:,}; "
        f"at most {m['max_in_flight']:,} flows in flight at once"
    )

"""Benchmark: export-format throughput (ExportSet) vs writing the same bytes to one file.

Run: .venv/bin/python bench/bench_formats.py [--mb 256] [--rounds 3] [--dir DIR]

Records are made in memory the way the channels make them (web heads with
`addons/archive_records`, 1 MiB body records, four flows interleaved; email messages from the
corpus; packets as `capture.subjects.pcapng` records of 1500-byte frames) and fed to `ExportSet` as
`lbm evidence open` feeds it (decryption is not measured: `bench/bench_export.py` measures the
whole open against `age -d`). The baseline, measured in the same run, writes the same record
bytes to one file (buffered writes + fsync), the least any export does. Prints MB/s per channel,
the ratio, and the peak traced memory of each export (flat in the archive's size for mail and
packets; for web about four times one flow's bodies).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons import archive_records as rec
from appliance.evidence.formats import ExportSet
from capture.subjects.pcapng import PcapngRecord

MIB = 1 << 20
Event = tuple[str, Any]


def _header(n: int, channel: str, kind: str, **extra: str) -> dict[str, Any]:
    return {"id": f"BENCH/000001/{n}", "channel": channel, "kind": kind, "framing": "chunked",
            "ts": "2026-03-01T09:00:00Z", "principal": "p1", "length": None, **extra}  # fmt: skip


def web_records(total: int) -> Iterator[Event]:
    """Flows of 8 MiB responses, four at a time, their body records interleaved."""
    body = os.urandom(MIB)
    n, flows = 0, max(1, total // (8 * MIB))
    for group in range(0, flows, 4):
        ids = [f"flow-{i}" for i in range(group, min(group + 4, flows))]
        for fid in ids:
            req = http.Request("b.test", 443, b"GET", b"https", b"", b"/" + fid.encode(),
                               b"HTTP/1.1", http.Headers([(b"Host", b"b.test")]), None, None,
                               0.0, None)  # fmt: skip
            resp = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
                [(b"Content-Length", str(8 * MIB).encode())]), None, None, 0.0, None)  # fmt: skip
            for kind, blob in (("http-request-head", rec.request_head(req)),
                               ("http-response-head", rec.response_head(resp))):  # fmt: skip
                n += 1
                yield from _record(_header(n, "web", kind, flow=fid, scheme="https"), [blob])
        for _ in range(8):
            for fid in ids:
                n += 1
                header = _header(n, "web", "http-response-body", flow=fid, scheme="https")
                yield from _record(header, [body])


def mail_records(total: int, corpus: Path) -> Iterator[Event]:
    emails = [p.read_bytes() for p in sorted((corpus / "emails" / "dev").glob("*.eml"))]
    n = done = 0
    while done < total:
        for blob in emails:
            n += 1
            done += len(blob)
            yield from _record(_header(n, "email", "message"), [blob])


def packet_records(total: int) -> Iterator[Event]:
    frame = os.urandom(1500)
    n = done = 0
    while done < total:
        buf = bytearray()
        record = PcapngRecord(buf.extend)
        for i in range(700):  # ~1 MiB records, as capture/subjects/recorder.py writes them
            record.packet(1, i * 1000, frame, len(frame))
        n += 1
        done += len(buf)
        yield from _record(_header(n, "packets", "pcapng"), [bytes(buf)])


def _record(header: dict[str, Any], chunks: list[bytes]) -> Iterator[Event]:
    yield "header", header
    for chunk in chunks:
        yield "data", chunk
    yield "end", {"length": sum(map(len, chunks))}


def run_export(events: list[Event], out: Path, trace: bool = False) -> tuple[float, int]:
    """Seconds (untraced) or peak traced bytes (traced: tracemalloc slows Python code ~10x)."""
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    export = ExportSet(out)
    for kind, value in events:
        if kind == "header":
            export.begin(value)
        elif kind == "data":
            export.data(value)
        else:
            export.end(True)
    export.close()
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    return elapsed, peak


def run_baseline(events: list[Event], out: Path) -> float:
    start = time.perf_counter()
    with (out / "plain.bin").open("wb", buffering=MIB) as fh:
        for kind, value in events:
            if kind == "data":
                fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="MiB of record bytes per channel")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared"
                    / "corpus")  # fmt: skip
    args = ap.parse_args()
    total = args.mb * MIB
    makers = {"web": lambda: web_records(total), "packets": lambda: packet_records(total)}
    if (args.corpus / "emails" / "dev").is_dir():
        makers["email"] = lambda: mail_records(total, args.corpus)
    else:
        print(f"email skipped: no corpus at {args.corpus}", file=sys.stderr)
    for channel, make in makers.items():
        events = list(make())  # the records' bytes share buffers: generating is not measured
        size = sum(len(v) for k, v in events if k == "data")
        best_export = best_plain = float("inf")
        peak = 0
        for _ in range(args.rounds):  # interleaved, best of N: a busy machine weighs on both
            work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-formats-"))
            try:
                best_plain = min(best_plain, run_baseline(events, work))
                elapsed, _ = run_export(events, work / "out")
                best_export = min(best_export, elapsed)
            finally:
                shutil.rmtree(work)
        work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-formats-"))
        try:
            _, peak = run_export(events, work / "out", trace=True)
        finally:
            shutil.rmtree(work)
        ratio = best_plain / best_export
        print(f"{channel:8s} {size / MIB:7.0f} MiB  export {size / MIB / best_export:7.1f} MB/s"
              f"  plain write {size / MIB / best_plain:7.1f} MB/s  ratio {ratio:5.2f}"
              f"  peak traced {peak / MIB:6.1f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

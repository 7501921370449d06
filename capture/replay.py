"""Replaying capture files through a `Pipeline`: each file read and decoded (and its flow keys
made) on a background thread a batch ahead of the flow table (`capture.read.prefetch`),
with a short GIL switch interval while it runs. `lbm capture replay` and the tests use it; live
capture drives the pipeline itself (`capture.live`)."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from capture import CaptureError
from capture.batch import PacketBatch
from capture.decode import Decoder
from capture.flow import BatchKeys, keys_of
from capture.pipeline import Pipeline
from capture.read import CaptureReader, Prefetch, open_capture
from capture.summary import Summary

SWITCH_INTERVAL_S = 0.0005  # the GIL switch interval while a replay runs (see `replay`)
GC_GEN0 = 100_000  # the collector's first threshold while a replay runs (see `replay`)


def replay(
    files: Iterable[str | Path | CaptureReader],
    pipeline: Pipeline,
    *,
    max_packets: int = 131072,
    prefetch: int = 1,
    timing: dict[str, float] | None = None,
    progress: Callable[[], None] | None = None,
) -> Summary:
    """Replay capture files through `pipeline` (each file its own flow table). A file whose
    header is broken is recorded in `summary.files_failed` and the others still run. A file
    may be given as a `CaptureReader` already open (the CLI opens it to fingerprint it).

    Reading and decoding run on a background thread up to `prefetch` batches ahead of the
    flow table (`capture.read.prefetch`); 0 keeps everything on the calling thread. One is
    enough (the reader's thread is the faster one): with 16 MiB chunks, 2 held 20-30 MiB more
    and were no faster (docs/capture-io.md). The reader then reads into two chunk buffers in
    turn, waiting for the flow table to take the queued batch when both are held, rather
    than touching a third (`CaptureReader.wait_taken`). `timing`, if given, gets
    "first_batch": the `time.monotonic()` when the first batch reached `pipeline.feed`
    (unless already set).
    `progress`, if given, is called after each batch (`lbm capture replay` paces its hashing
    child by it: `capture.read.childhash.ChildHash.pace`)."""
    s = pipeline.summary
    # The flow table's C passes and numpy sorts release the GIL; taking it back waited up to
    # the switch interval (5 ms) while the reader's thread ran Python. A 0.5 ms interval for
    # the replay: the loop took 15-25% less time (docs/capture-flow-scale.md).
    interval = sys.getswitchinterval()
    if prefetch > 0:
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
    # The cyclic collector: what exists before the replay (modules, the policy snapshot, the
    # configuration) lives to the end, so it is frozen out of every collection; and a first
    # threshold of 100k container objects instead of 700 lets the replay's short-lived
    # tuples and rows die before a collection scans them (docs/capture-io.md).
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_GEN0), *threshold[1:])
    try:
        _replay(files, pipeline, s, max_packets, prefetch, timing, progress)
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
        if not frozen:  # another freeze (the caller's) is left as it was, with these in it
            gc.unfreeze()
    return s


def _replay(
    files: Iterable[str | Path | CaptureReader],
    pipeline: Pipeline,
    s: Summary,
    max_packets: int,
    prefetch: int,
    timing: dict[str, float] | None,
    progress: Callable[[], None] | None,
) -> None:
    for f in files:
        if isinstance(f, CaptureReader):
            reader, name = f, str(f.path)
        else:
            name = str(f)
            try:
                reader = open_capture(name)
            except CaptureError as exc:
                s.files_failed[name] = str(exc)
                continue
        pipeline.interface = Path(name).name
        dec = Decoder()
        try:
            with reader:
                # the flow keys too are made on the reader's thread (C passes and array code
                # that need no flow state), beside the flow table's work on earlier batches
                decoded = (_keyed(dec.decode(raw)) for raw in reader.batches(max_packets))
                ahead = Prefetch(decoded, prefetch) if prefetch > 0 else None
                if ahead is not None:  # two chunk buffers in turn (`capture.read.chunks`)
                    reader.wait_taken = ahead.wait_taken
                try:
                    for batch, keys in ahead if ahead is not None else decoded:
                        if timing is not None and "first_batch" not in timing:
                            timing["first_batch"] = time.monotonic()
                        pipeline.feed(batch, keys)
                        if progress is not None:
                            progress()
                finally:
                    if ahead is not None:
                        ahead.close()
        except CaptureError as exc:
            s.files_failed[name] = str(exc)
        finally:
            s.add_bad({f"reader_{k}": v for k, v in reader.summary.items()})
            s.add_bad(dec.summary)
            pipeline.end_source()
        try:  # a mapped chunk's pages read after its walk, up to the archive's last packets
            reader.check()
        except CaptureError as exc:
            s.files_failed.setdefault(name, str(exc))


def _keyed(batch: PacketBatch) -> tuple[PacketBatch, BatchKeys]:
    return batch, keys_of(batch)

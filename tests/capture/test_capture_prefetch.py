"""Reading and decoding on a background thread (`capture.read.prefetch`): same flows as on one
thread, errors reach the caller, and a consumer that stops early stops the producer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_zeeklogs import corpus

from appliance.policy.snapshot import Snapshot
from capture.flow.table import FlowConfig
from capture.pipeline import Pipeline
from capture.read.prefetch import Prefetch
from capture.replay import replay
from store.metadata import read_stream
from store.paths import DataPaths


def _flows(tmp: Path, files: list[Path], prefetch: int) -> list[tuple[object, ...]]:
    snap = Snapshot.build()
    pipe = Pipeline(
        paths=DataPaths(tmp),
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: snap,
        internal_networks=["10.0.0.0/8"],
        flow_config=FlowConfig(seed=3),
    )
    replay(files, pipe, max_packets=97, prefetch=prefetch)  # many small batches
    pipe.close()
    rows = read_stream(DataPaths(tmp), "flow").drop(["gateway"]).to_pylist()
    return sorted(tuple(sorted(r.items(), key=lambda kv: kv[0])) for r in rows)


def test_background_reading_gives_the_same_rows(tmp_path: Path) -> None:
    dev = corpus() / "pcaps" / "dev"
    files = [dev / "zeek__wikipedia.pcap", dev / "zeek__ipv4__fragmented-1.pcap"]
    one = _flows(tmp_path / "a", files, prefetch=0)
    two = _flows(tmp_path / "b", files, prefetch=2)
    assert one and one == two


def test_producer_error_reaches_the_consumer_after_earlier_items() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("broken at item 3")

    got = []
    with pytest.raises(ValueError, match="broken at item 3"):
        for x in Prefetch(source(), depth=1):
            got.append(x)
    assert got == [1, 2]


def test_consumer_stopping_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            n = 0
            while True:  # endless producer
                yield n
                n += 1
        finally:
            closed.set()

    ahead = Prefetch(source(), depth=2)
    for x in ahead:
        if x == 5:
            break
    ahead.close()
    assert closed.is_set()
    assert not ahead._thread.is_alive()


def test_the_producer_stays_bounded_and_makes_nothing_more_once_closed() -> None:
    """Nobody consumes: the producer makes `depth` items (queued) and one more (held, waiting
    to be queued), then waits; `close()`, which drains the queue, ends it without letting it
    make one more item (a batch read and decoded for nothing)."""
    made: list[int] = []

    def source() -> Iterator[int]:
        while True:
            made.append(1)
            yield len(made)

    ahead = Prefetch(source(), depth=2)
    deadline = time.monotonic() + 5
    while len(made) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # a producer ignoring its bound would be far along now
    assert len(made) == 3
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 1 and not ahead._thread.is_alive()
    assert len(made) == 3


def test_wait_taken_waits_for_a_queued_item_to_be_taken_and_not_when_none_is() -> None:
    """The reader, with both chunk buffers held, asks `wait_taken` while it makes the next
    batch: it returns True once the consumer has taken the queued batch (so let go of the one
    before), and False at once when nothing is queued (nothing to wait for)."""
    box: list[Prefetch[int]] = []
    calls: list[tuple[bool, float]] = []

    def source() -> Iterator[int]:
        yield 1  # queued; nobody takes it for 0.3 s
        while not box:
            time.sleep(0.001)
        t = time.monotonic()
        calls.append((box[0].wait_taken(), time.monotonic() - t))
        yield 2
        time.sleep(0.3)  # the consumer takes 2 meanwhile: nothing queued
        t = time.monotonic()
        calls.append((box[0].wait_taken(), time.monotonic() - t))
        yield 3

    box.append(Prefetch(source(), depth=1))
    time.sleep(0.3)
    assert list(box[0]) == [1, 2, 3]
    (waited, w1), (nothing, w2) = calls
    assert waited is True and w1 >= 0.2
    assert nothing is False and w2 < 0.1


def test_closing_the_pipeline_twice_writes_each_row_once(tmp_path: Path) -> None:
    """`lbm capture replay` closes the pipeline after its last file, before the ledger entry
    (the rows durable while the hashing child finishes), and again as it ends."""
    files = [corpus() / "pcaps" / "dev" / "zeek__wikipedia.pcap"]
    once = _flows(tmp_path / "once", files, prefetch=0)
    snap = Snapshot.build()
    pipe = Pipeline(
        paths=DataPaths(tmp_path / "twice"),
        gateway="gw1",
        writer_name="replay",
        snapshot=lambda: snap,
        internal_networks=["10.0.0.0/8"],
        flow_config=FlowConfig(seed=3),
    )
    replay(files, pipe, max_packets=97, prefetch=0)
    pipe.close()
    pipe.close()
    rows = read_stream(DataPaths(tmp_path / "twice"), "flow").drop(["gateway"]).to_pylist()
    assert once and sorted(tuple(sorted(r.items(), key=lambda kv: kv[0])) for r in rows) == once

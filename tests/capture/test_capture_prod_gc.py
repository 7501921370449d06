"""While `replay` runs, what existed before it is frozen out of the cyclic collector and the
first threshold is 100k container objects; afterwards both are as they were (a library call
must not leave the process's collector changed), even when the replay fails, and a freeze the
caller made is left in place."""

from __future__ import annotations

import gc
import struct
from pathlib import Path

import pytest

from capture.replay import GC_GEN0, replay


class _Probe:
    """A stand-in pipeline (the parts `replay` uses) that records the collector's state at
    each batch and fails there if asked."""

    def __init__(self, fail: bool = False) -> None:
        from capture.summary import Summary

        self.summary = Summary()
        self.seen: list[tuple[tuple[int, int, int], int]] = []
        self.fail = fail
        self.interface = ""

    def feed(self, batch: object, keys: object = None) -> None:
        self.seen.append((gc.get_threshold(), gc.get_freeze_count()))
        if self.fail:
            raise RuntimeError("boom")

    def end_source(self) -> None:
        pass


def _pcap(tmp_path: Path) -> list[str]:
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\x00" * 28  # ARP: no flow needed
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    p = tmp_path / "one.pcap"
    p.write_bytes(head + rec)
    return [str(p)]


def test_the_collector_is_changed_only_while_the_replay_runs(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    probe = _Probe()
    replay(_pcap(tmp_path), probe)  # type: ignore[arg-type]
    during = probe.seen[-1]  # at a batch, inside the replay
    assert during[0][0] == max(before[0], GC_GEN0) and during[0][1:] == before[1:]
    assert during[1] > 0  # what existed before is frozen
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_failing_replay_restores_it_and_a_callers_freeze_stays(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        replay(_pcap(tmp_path), _Probe(fail=True))  # type: ignore[arg-type]
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        replay(_pcap(tmp_path), _Probe())  # type: ignore[arg-type]
        assert gc.get_freeze_count() >= frozen  # the caller's freeze is not undone
    finally:
        gc.unfreeze()

"""Shared test fixtures: the corpus location, an `lbm` subprocess runner, initialised data dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm, corpus_root


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if not (root / "pcaps").is_dir():
        pytest.skip(f"test corpus not found at {root} (set LBM_CORPUS to ../shared/corpus)")
    return root


@pytest.fixture(scope="module", params=["mapped", "read"])
def reader_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """A capture reader's chunks mapped from the page cache (the default where the SIGBUS
    guard installs: `capture.read.mapped`) or read (`LBM_CAPTURE_NO_MMAP=1`): a module that
    uses it runs each of its tests both ways. Module-scoped (not monkeypatch) so hypothesis's
    tests may use it."""
    old = os.environ.pop("LBM_CAPTURE_NO_MMAP", None)
    if request.param == "read":
        os.environ["LBM_CAPTURE_NO_MMAP"] = "1"
    try:
        yield str(request.param)
    finally:
        os.environ.pop("LBM_CAPTURE_NO_MMAP", None)
        if old is not None:
            os.environ["LBM_CAPTURE_NO_MMAP"] = old


@pytest.fixture
def lbm(tmp_path: Path) -> Lbm:
    """An `lbm` runner on a fresh, initialised data dir with the fake clock allowed."""
    runner = Lbm(tmp_path / "data")
    runner("init", check=True)
    config = runner.data_dir / "lbm.toml"
    text = config.read_text().replace("fake_clock = false", "fake_clock = true")
    config.write_text(text)
    return runner

"""Shared test fixtures: the corpus location, an `lbm` subprocess runner, initialised data dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from lbm_testing import Lbm, corpus_root


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if not (root / "pcaps").is_dir():
        pytest.skip(f"test corpus not found at {root} (set LBM_CORPUS to ../shared/corpus)")
    return root


@pytest.fixture
def lbm(tmp_path: Path) -> Lbm:
    """An `lbm` runner on a fresh, initialised data dir with the fake clock allowed."""
    runner = Lbm(tmp_path / "data")
    runner("init", check=True)
    config = runner.data_dir / "lbm.toml"
    text = config.read_text().replace("fake_clock = false", "fake_clock = true")
    config.write_text(text)
    return runner

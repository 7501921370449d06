"""One moto S3 server per test module (tests/support/s3server.py), and gateway data dirs copied
from one `lbm init` per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm
from s3server import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(log_dir=Path(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `lbm init` per module; each test copies it (`gw`)."""
    lbm = Lbm(tmp_path_factory.mktemp("tpl") / "data")
    lbm("init", check=True)
    return lbm.data_dir


@pytest.fixture
def gw(template: Path, tmp_path: Path) -> Lbm:
    """A fresh gateway data dir (a copy of the module's initialised template)."""
    data = tmp_path / "data"
    shutil.copytree(template, data, symlinks=True)
    return Lbm(data)

"""One moto S3 server per test module (tests/support/s3server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(log_dir=Path(tmp_path_factory.mktemp("moto"))) as server:
        yield server

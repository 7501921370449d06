"""store/segment_io.py: the segment output's background SHA-256 must equal the hash of the file
as stored, however the writes are split, and a file changed underneath fails cleanly."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from store import ArchiveError
from store.segment_io import HASH_WINDOW, SegmentOutput


def _open(path: Path) -> SegmentOutput:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    out = SegmentOutput(fd, "segment R1/000001")
    out.digest.open(path)
    return out


@pytest.mark.parametrize("total", [0, 1, HASH_WINDOW - 1, HASH_WINDOW, 3 * HASH_WINDOW + 777])
def test_digest_matches_the_file_whatever_the_write_sizes(tmp_path: Path, total: int) -> None:
    rng = random.Random(total)
    data = rng.randbytes(total)
    path = tmp_path / "000001.age"
    out = _open(path)
    pos = 0
    while pos < total:  # single writes and writev batches of odd sizes, as the age writer does
        if rng.random() < 0.3:
            size = rng.randint(1, 70_000)
            out.write(data[pos : pos + size])
        else:
            sizes = [rng.randint(1, 300_000) for _ in range(rng.randint(1, 16))]
            chunks = []
            for size in sizes:
                chunks.append(data[pos : pos + size])
                pos += size
            out.write_many([c for c in chunks if c])
            continue
        pos += size
    assert out.bytes == total
    digest = out.hexdigest()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()
    assert out.hexdigest() == digest  # stable once computed
    out.digest.close()
    os.close(out.fd)


def test_a_file_cut_underneath_gives_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "000001.age"
    out = _open(path)
    secret = b"CANARY-content-" * 10_000
    out.write_many([secret, secret])
    os.truncate(path, 1000)  # someone cut the file before it was hashed
    with pytest.raises(ArchiveError) as caught:
        out.hexdigest()
    message = str(caught.value)
    assert "segment R1/000001" in message and "read the segment back" in message
    assert "CANARY" not in message
    out.digest.close()
    os.close(out.fd)


def test_write_errors_name_the_segment_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "000001.age"
    out = _open(path)
    os.close(out.fd)
    with pytest.raises(ArchiveError, match=r"segment R1/000001: cannot write segment"):
        out.write_many([b"CANARY" * 100])
    out.digest.close()

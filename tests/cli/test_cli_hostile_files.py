"""A FIFO, socket, directory or device where lbm expects a file (config, identity feed) is
refused with one line naming the path, never opened blocking: today's hang is the bypass.
Every command runs with a timeout, so a hang fails the test instead of stalling it."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbm_testing import Lbm

from store.safefile import UnsafeFileError, read_regular

HANG = 20  # seconds: far beyond what any of these commands needs


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO with no writer, a listening Unix socket, a directory and a character device."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    sock.listen(1)
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    try:
        yield {
            "FIFO": fifo,
            "socket": sock_path,
            "directory": directory,
            "character device": Path("/dev/zero"),
        }
    finally:
        sock.close()


KINDS = ["FIFO", "socket", "directory", "character device"]


def one_error_line(result_stderr: str, path: Path, kind: str) -> None:
    lines = [x for x in result_stderr.strip().splitlines() if not x.startswith("lbm: warning:")]
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("lbm: error: ") and str(path) in lines[0], lines[0]
    assert f"is a {kind}" in lines[0] and "Traceback" not in result_stderr, lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_read_regular_refuses_without_blocking(hostile: dict[str, Path], kind: str) -> None:
    with pytest.raises(UnsafeFileError, match=f"is a {kind}, not a regular file"):
        read_regular(hostile[kind], "test file")


def test_read_regular_reads_a_file_and_enforces_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_regular(path, "f") == b"x" * 10
    with pytest.raises(UnsafeFileError, match="larger than 9 bytes"):
        read_regular(path, "f", max_bytes=9)
    with pytest.raises(UnsafeFileError, match="not found"):
        read_regular(tmp_path / "none", "f")


@pytest.mark.parametrize("kind", KINDS)
def test_config_that_is_not_a_regular_file_is_refused(
    lbm: Lbm, hostile: dict[str, Path], kind: str
) -> None:
    path = hostile[kind]
    for args in (("--config", str(path), "status"), ("config", "check", str(path))):
        try:
            result = lbm(*args, timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"lbm {' '.join(args)} hung on a {kind}")
        assert result.returncode == 2, (args, result.stderr)
        one_error_line(result.stderr, path, kind)
    try:
        result = lbm("status", env={"LBM_CONFIG": str(path)}, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"LBM_CONFIG on a {kind} hung")
    assert result.returncode == 2
    one_error_line(result.stderr, path, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_feed_that_is_not_a_regular_file_is_refused(
    lbm: Lbm, hostile: dict[str, Path], kind: str
) -> None:
    path = hostile[kind]
    try:
        result = lbm("identity", "import", str(path), timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lbm identity import hung on a {kind}")
    assert result.returncode == 1, result.stderr
    one_error_line(result.stderr, path, kind)
    cfg = lbm.data_dir / "lbm.toml"
    cfg.write_text(cfg.read_text().replace('feed = ""', f'feed = "{path}"'))
    try:
        result = lbm("config", "check", timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lbm config check hung on a {kind} feed")
    assert result.returncode == 2
    one_error_line(result.stderr, path, kind)
    assert "[identity] feed" in result.stderr


def test_housekeeping_pass_with_a_fifo_feed_does_not_hang(
    lbm: Lbm, hostile: dict[str, Path]
) -> None:
    fifo = hostile["FIFO"]
    os.utime(fifo, (1e9, 1e9))  # settled long ago: the pass imports it at once
    cfg = lbm.data_dir / "lbm.toml"
    cfg.write_text(cfg.read_text().replace('feed = ""', f'feed = "{fifo}"'))
    try:
        result = lbm("housekeeping", "run", "--once", timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail("a housekeeping pass hung on a FIFO identity feed")
    assert "Traceback" not in result.stderr + result.stdout
    # the daemon logs JSON lines to stdout (journald keeps them)
    assert f"{fifo}: identity feed is a FIFO" in result.stdout


def test_dev_identity_never_writes_into_a_fifo(lbm: Lbm, hostile: dict[str, Path]) -> None:
    fifo = hostile["FIFO"]
    try:
        result = lbm("keys", "dev-identity", "--out", str(fifo), timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail("keys dev-identity hung on a FIFO")
    assert result.returncode == 2 and "exists already" in result.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["rewrap", "export-raw"])
def test_identity_file_that_is_not_a_regular_file_is_refused(
    lbm: Lbm, hostile: dict[str, Path], kind: str, command: str, tmp_path: Path
) -> None:
    """An investigator's identity is read from a regular file or stdin only: a FIFO given as
    `--identity` would otherwise hang the command until someone writes to it."""
    path = hostile[kind]
    argv = (
        ["keys", "rewrap", "CA1-X", "--identity", str(path)]
        if command == "rewrap"
        else [
            "archive",
            "export-raw",
            "CA1-X",
            "--identity",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    try:
        result = lbm(*argv, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lbm {command} hung on a {kind} identity")
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, path, kind)


@pytest.mark.parametrize("kind", ["FIFO", "character device"])
def test_signed_statement_that_is_not_a_regular_file_is_refused(
    lbm: Lbm, hostile: dict[str, Path], kind: str
) -> None:
    path = hostile[kind]
    argv = ["auth", "ratify", "CA1-X", "--officer", "p100", "--statement", str(path),
            "--signature", str(path)]  # fmt: skip
    try:
        result = lbm(*argv, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lbm auth ratify hung on a {kind} statement")
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, path, kind)

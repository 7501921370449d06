"""Every file lbm writes under the data directory is private (0600, directories 0700), whatever
the caller's umask, and so is exported plaintext.

A realistic sequence runs through the real CLI under `umask 022` (the common default, which
made registry.sqlite, its WAL, Parquet files and manifests 0644): init, an investigator, a grant,
an identity import, a capture replay of a corpus pcap in which the subject talks (so an archive
and metadata get written), verify, recover, records and export-raw. Then the whole data
directory is walked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lbm_testing import Lbm, grant_argv

from store import agefile as age
from store import sqlite as store_sqlite
from store.fsutil import atomic_write, ensure_dir

PCAP = "pcaps/dev/zeek__tcp-http-with-padding.pcap"  # 167.221.30.181 -> 217.207.159.63, 2023-08-02
SUBJECT_IP = "167.221.30.181"
FAKE = {"LBM_FAKE_NOW": "2023-08-02T15:00:00Z"}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _loose(root: Path) -> list[str]:
    """Everything under `root` that is not private: files readable or writable by group or
    others, directories other than 0700."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            if mode != 0o700:
                found.append(f"{os.path.join(dirpath, name)} (dir {mode:o})")
        for name in filenames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            if mode & 0o077:
                found.append(f"{os.path.join(dirpath, name)} ({mode:o})")
    return found


def test_a_realistic_session_under_umask_022_leaves_nothing_readable(
    tmp_path: Path, corpus: Path
) -> None:
    data = tmp_path / "nested" / "data"
    lbm = Lbm(data, env=FAKE)
    secret, public = age.generate()
    identity = tmp_path / "inv.key"
    identity.write_text(age.identity_file_text(secret))
    feed = tmp_path / "leases.csv"
    feed.write_text(
        f"principal,kind,value,valid_from,valid_to\np100,ip,{SUBJECT_IP},2023-08-01T00:00:00Z,\n"
    )
    export = tmp_path / "export"
    with umask(0o022):
        lbm("init", check=True)
        config = data / "lbm.toml"
        text = config.read_text().replace("fake_clock = false", "fake_clock = true")
        networks = 'internal_networks = ["'
        text = text.replace(networks, networks + '167.221.30.0/24", "')
        config.write_text(text)
        lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True)
        lbm("identity", "import", str(feed), check=True)
        officer = ("p500", "A. Officer", "head_of_professional_standards", "superintendent")
        lbm(*grant_argv("ca1-2023-7", "p100", channel="packets", officer=officer), check=True)
        replay = lbm("capture", "replay", str(corpus / PCAP), "--json", check=True)
        assert '"archived_packets": 0' not in replay.stdout, replay.stdout
        assert list((data / "archive" / "ca1-2023-7").glob("*.manifest.json"))
        assert list((data / "metadata").rglob("*.parquet"))
        lbm("archive", "verify", check=True)
        lbm("archive", "recover", check=True)
        lbm("archive", "records", "ca1-2023-7", check=True)
        lbm("audit", "verify", check=True)
        lbm("status")
        lbm(
            "archive", "export-raw", "ca1-2023-7", "--identity", str(identity),
            "--out", str(export), check=True,
        )  # fmt: skip
    assert (data / "registry.sqlite-wal").exists() or (data / "registry.sqlite").exists()
    assert _loose(tmp_path / "nested") == []
    exported = list(export.rglob("*.pcapng"))
    assert exported, list(export.rglob("*"))
    assert _loose(export) == []


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_store_writers_set_exact_modes_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    """Library use without the CLI's umask: fsutil and the registry opener still make private
    files and directories (and only private ones)."""
    with umask(mask):
        made = ensure_dir(tmp_path / "a" / "b" / "c")
        atomic_write(made / "file", b"x")
        stale = made / f".again.tmp-{os.getpid()}"  # a crashed writer's leftover, world-readable
        stale.write_bytes(b"old")
        stale.chmod(0o666)
        atomic_write(made / "again", b"y")
        conn = store_sqlite.connect(made / "registry.sqlite")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    try:
        assert sorted(p.name for p in made.iterdir()) == [
            "again", "file", "registry.sqlite", "registry.sqlite-shm", "registry.sqlite-wal",
        ]  # fmt: skip
        assert _loose(tmp_path / "a") == []
        for name in ("a", "a/b", "a/b/c"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700
    finally:
        conn.close()


def test_an_old_world_readable_registry_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    with umask(0o022):
        conn = store_sqlite.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    path.chmod(0o644)
    store_sqlite.connect(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

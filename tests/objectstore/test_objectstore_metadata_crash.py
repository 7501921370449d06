"""Metadata on object storage across processes: two gateways (gw1, gw2: two data dirs, one bucket
and prefix) publishing concurrently while a reader lists and reads in a loop (never a row twice,
never a row lost once seen, every acknowledged row in the end), and kill -9 of a writer at random
moments, with the store up and down, then restart: nothing acknowledged lost or duplicated.

Real `MetadataWriter`s in subprocesses; moto's standalone S3 server (tests/support/s3server.py)
stands in for MinIO or Ceph RGW. Credentials reach the writers through the AWS environment
variables (the `[store]` fallback), the endpoint through the settings.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
from s3server import ACCESS_KEY, REGION, SECRET_KEY, Outage, S3Server

from store.metadata.upload import open_remote
from store.objectstore import S3Settings, StoreSettings

REPO = Path(__file__).resolve().parents[2]

WRITER_SCRIPT = r"""
import sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from store.metadata import MetadataWriter
from store.objectstore import S3Settings, StoreSettings
from store.paths import DataPaths

data, gateway, root, endpoint, prefix, rounds = sys.argv[1:7]
st = StoreSettings(root, "/unused/a", "/unused/k", S3Settings(endpoint=endpoint),
                   metadata_publish_seconds=0.1)
w = MetadataWriter("web", "proxy", paths=DataPaths(Path(data), store=st), gateway=gateway,
                   flush_interval=0.05)
t0 = datetime(2026, 3, 1, 9, 58, tzinfo=UTC)  # rows cross into hour 10
n = done = 0
while int(rounds) == 0 or done < int(rounds):
    for _ in range(50):
        w.append({"ts": t0 + timedelta(milliseconds=97 * n), "uid": f"{prefix}{n}",
                  "host": "example.org"})
        n += 1
    w.flush()
    done += 1
    print(n, flush=True)  # every row before this count is accepted
    time.sleep(0.02)
w.close()
print("closed", flush=True)
"""


def start(data: Path, gateway: str, root: str, endpoint: str, prefix: str, rounds: int,
          s3: S3Server) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(data), gateway, root, endpoint, prefix,
         str(rounds)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, **s3.env(), "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def acked(proc: subprocess.Popen[str], at_least: int | None = None) -> int:
    """Read the writer's acknowledgements: up to `at_least` (then return), or to its end."""
    n = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "closed":
            break
        n = int(line)
        if at_least is not None and n >= at_least:
            break
    return n


class Stall:
    """A loopback endpoint that takes requests and never answers: an upload in flight forever
    (until the writer's request timeout). `puts` counts PutObject requests it has received."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.puts = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = conn.recv(65536)
            if head.startswith(b"PUT /") and b".parquet" in head.split(b"\r\n", 1)[0]:
                self.puts += 1
            while conn.recv(65536):
                pass

    def close(self) -> None:
        for c in [self.sock, *self.conns]:
            with contextlib.suppress(OSError):
                c.close()


def read_uids(root: str, s3: S3Server) -> list[str]:
    st = StoreSettings(root, "/a", "/k", S3Settings(s3.endpoint, REGION, ACCESS_KEY, SECRET_KEY))
    fs_root = open_remote(st)
    try:
        data = ds.dataset(fs_root.path("stream=web"), filesystem=fs_root.fs, format="parquet")
    except FileNotFoundError:  # nothing published yet
        return []
    return list(data.to_table(columns=["uid"]).column("uid").to_pylist())


def test_two_gateways_publish_concurrently_and_a_looping_reader_sees_each_row_once(
    s3: S3Server, tmp_path: Path
) -> None:
    s3.make_bucket("lbm-two")
    root = "s3://lbm-two/force"
    procs = {
        gw: start(tmp_path / gw, gw, root, s3.endpoint, f"{gw}-", 60, s3) for gw in ("gw1", "gw2")
    }
    seen: set[str] = set()
    reads = 0
    while any(p.poll() is None for p in procs.values()) or reads < 3:
        uids = read_uids(root, s3)
        dup = [u for u, c in Counter(uids).items() if c > 1]
        assert not dup, f"a reader saw rows twice: {dup[:5]}"
        assert seen <= set(uids), "a row seen before is gone"
        seen = set(uids)
        reads += 1
    totals = {gw: acked(p) for gw, p in procs.items()}
    for p in procs.values():
        assert p.wait(30) == 0
    assert totals == {"gw1": 3000, "gw2": 3000}
    final = read_uids(root, s3)
    expected = {f"{gw}-{i}" for gw in procs for i in range(3000)}
    assert len(final) == len(expected) and set(final) == expected
    assert reads >= 3
    keys = s3.keys("lbm-two")
    assert {k.split("/")[-1].split("__")[0] for k in keys} == {"gw1", "gw2"}
    assert all(k.startswith("force/stream=web/date=2026-03-01/hour=") for k in keys)


def test_kill_9_mid_upload_and_during_an_outage_loses_and_duplicates_nothing(
    s3: S3Server, tmp_path: Path
) -> None:
    s3.make_bucket("lbm-kill")
    root = "s3://lbm-kill/force"
    rng = random.Random(19)
    acknowledged: list[str] = []
    stall = Stall()
    with Outage(s3.endpoint) as gate:
        for run in range(5):
            down = run == 2  # one run with the store unreachable: the outbox fills, then kill
            stalled = run == 3  # one run killed while a PutObject is surely in flight
            if down:
                gate.down()
            endpoint = stall.endpoint if stalled else gate.endpoint
            proc = start(tmp_path / "gw1", "gw1", root, endpoint, f"r{run}-", 0, s3)
            n = acked(proc, at_least=rng.choice([300, 600, 900]))
            time.sleep(rng.uniform(0.0, 0.4))  # let it run on: the kill lands anywhere
            if stalled:
                deadline = time.monotonic() + 10
                while not stall.puts and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert stall.puts, "no upload was in flight"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            acknowledged += [f"r{run}-{i}" for i in range(n)]
            if down:
                outbox = tmp_path / "gw1" / "journal" / "proxy.outbox"
                assert list(outbox.rglob("*.parquet")), "nothing waited for upload"
                gate.up()
        proc = start(tmp_path / "gw1", "gw1", root, gate.endpoint, "last-", 1, s3)
        acknowledged += [f"last-{i}" for i in range(acked(proc))]
        assert proc.wait(30) == 0
    stall.close()
    uids = read_uids(root, s3)
    dup = [u for u, c in Counter(uids).items() if c > 1]
    assert not dup, f"rows duplicated after kill -9: {dup[:5]}"
    missing = set(acknowledged) - set(uids)
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:5]}"
    assert not list((tmp_path / "gw1" / "journal" / "proxy.outbox").rglob("*.parquet"))

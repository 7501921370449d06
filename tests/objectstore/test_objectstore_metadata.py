"""Metadata on object storage, in process: whole objects under the hive keys, no compaction there,
the store down (rows keep being accepted, backlog counted, bounded and shown by `lbm status`,
credentials never logged), then back (the backlog drains), restart with a waiting outbox.

The S3 server is moto's standalone server (tests/support/s3server.py), standing in for MinIO or
Ceph RGW; the store reaches it through pyarrow's S3FileSystem over HTTP on loopback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from lbm_testing import Lbm
from s3server import ACCESS_KEY, REGION, SECRET_KEY, Outage, S3Server, s3_store_config

from appliance.cli.daemon_metrics import add_writer
from appliance.config.load import load_config
from appliance.config.schema_storage import store_settings
from appliance.counters import Counters, StatusWriter
from store.metadata import MetadataWriter, read_stream
from store.metadata.upload import open_remote
from store.objectstore import S3Settings, StoreSettings
from store.paths import DataPaths

PCAP = "pcaps/dev/zeek__tcp-http-with-padding.pcap"
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
_buckets = count()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"lbm-meta-{next(_buckets)}"
    s3.make_bucket(name)
    return name


def settings(bucket: str, endpoint: str, **kw: float) -> StoreSettings:
    s3 = S3Settings(endpoint, REGION, ACCESS_KEY, SECRET_KEY)
    return StoreSettings(f"s3://{bucket}/force", "/x/a", "/x/k", s3, **kw)  # type: ignore[arg-type]


def writer(root: Path, st: StoreSettings, gateway: str = "gw1", **kw: float) -> MetadataWriter:
    return MetadataWriter(
        "web", "proxy", paths=DataPaths(root, store=st), gateway=gateway,
        flush_interval=0.05, **kw,
    )  # fmt: skip


def rows(prefix: str, n: int, start: datetime = T0) -> Iterator[dict[str, object]]:
    for i in range(n):
        yield {"ts": start + timedelta(seconds=7 * i), "uid": f"{prefix}{i}", "host": "example.org"}


def uids(*spec: str | int) -> list[str]:
    """uids("a", 3, "b", 2) -> sorted a0 a1 a2 b0 b1."""
    out = []
    for prefix, n in zip(spec[::2], spec[1::2], strict=True):
        out += [f"{prefix}{i}" for i in range(int(n))]
    return sorted(out)


def remote_uids(st: StoreSettings, s3: S3Server) -> list[str]:
    """Every uid on the store (read from the server directly, not through an Outage relay)."""
    root = open_remote(settings(st.metadata_root.split("/")[2], s3.endpoint))
    data = ds.dataset(root.path("stream=web"), filesystem=root.fs, format="parquet")
    return sorted(data.to_table(columns=["uid"]).column("uid").to_pylist())


def test_rows_become_whole_objects_under_their_hive_keys_and_are_never_compacted(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    st = settings(bucket, s3.endpoint, metadata_publish_seconds=3600)
    with writer(tmp_path, st, compact_delay=0) as w:
        for row in rows("a", 600):  # 70 minutes: hours 09 and 10
            w.append(row)
        w.publish()
        for row in rows("b", 10):
            w.append(row)
        w.publish()
        assert w.wait_uploaded(20)
        assert w.compact() == 0  # two files of hour 09, but never merged on the object store
        keys = s3.keys(bucket)
        assert tuple(w.store_backlog()) == (0, 0, 0)
    assert s3.keys(bucket) == keys
    assert [k.rsplit("__", 1)[0] for k in keys] == [
        "force/stream=web/date=2026-03-01/hour=09/gw1__proxy",
        "force/stream=web/date=2026-03-01/hour=09/gw1__proxy",
        "force/stream=web/date=2026-03-01/hour=10/gw1__proxy",
    ]
    assert remote_uids(st, s3) == uids("a", 600, "b", 10)
    # the store's own reader follows the root (a third data dir with the same [store])
    reader = DataPaths(tmp_path / "elsewhere", store=st)
    assert sorted(read_stream(reader, "web").column("uid").to_pylist()) == uids("a", 600, "b", 10)
    assert read_stream(reader, "email").num_rows == 0
    # nothing published locally: the outbox is empty, the local metadata folder unused
    assert not list((tmp_path / "journal" / "proxy.outbox").rglob("*.parquet"))
    assert not (tmp_path / "metadata").exists()
    seqs = [int(k.rsplit("__", 1)[1].removesuffix(".parquet")) for k in keys]
    assert int((tmp_path / "journal" / "proxy.seq").read_text()) == max(seqs)


def test_store_down_rows_accepted_backlog_shown_then_drained(
    s3: S3Server, bucket: str, lbm: Lbm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lbm")
    with Outage(s3.endpoint) as gate:
        # the real configuration path: [store] in lbm.toml -> StoreSettings
        s3_store_config(lbm.data_dir, gate.endpoint, metadata_root=f"s3://{bucket}/force")
        st = store_settings(load_config(lbm.data_dir / "lbm.toml"), lbm.data_dir)
        st = StoreSettings(**{**st.__dict__, "metadata_publish_seconds": 0.2})
        gate.down()
        w = writer(lbm.data_dir, st)
        counters = Counters("proxy")
        add_writer(counters, w)
        status = StatusWriter(lbm.data_dir / "run", "proxy", counters)
        try:
            for part in range(5):  # a gateway whose store is down keeps serving
                for row in rows(f"d{part}-", 50):
                    assert w.append_nowait(row)
                w.flush()
            deadline = time.monotonic() + 15
            while w.store_backlog().failures < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            backlog = w.store_backlog()
            assert backlog.files >= 1 and backlog.bytes > 0 and backlog.failures >= 2
            assert s3.keys(bucket) == []
            status.write()
            shown = json.loads((lbm.data_dir / "run" / "proxy.status.json").read_text())
            assert shown["counters"]["store_backlog_files"] >= 1
            assert shown["counters"]["store_upload_failures"] >= 2
            prom = (lbm.data_dir / "run" / "proxy.prom").read_text()
            assert "lbm_store_backlog_bytes " in prom and bucket not in prom
            res = lbm.inproc("status", "--json")
            assert json.loads(res.stdout)["store_backlog_files"] >= 1
            text = lbm.inproc("status").stdout
            assert "awaiting upload" in text and bucket not in text
            gate.up()
            assert w.wait_uploaded(30), w.store_backlog()
        finally:
            w.close()
            status.close()
    uids = remote_uids(st, s3)
    assert len(uids) == len(set(uids)) == 250
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("lbm"))
    assert "upload to s3://" in logged  # the outage was reported...
    assert SECRET_KEY not in logged and ACCESS_KEY not in logged  # ...without credentials


def test_backlog_bound_stops_draining_refuses_as_gaps_then_recovers(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    refused: list[tuple[str, int]] = []
    with Outage(s3.endpoint) as gate:
        st = settings(bucket, gate.endpoint, metadata_publish_seconds=0.1, upload_backlog_mb=0)
        gate.down()
        w = MetadataWriter(
            "web", "proxy", paths=DataPaths(tmp_path, store=st), gateway="gw1",
            flush_interval=0.05, queue_limit=40, gap_quiet=0.2,
            on_gap=lambda r: refused.append((r.reason, r.rows)),
        )  # fmt: skip
        try:
            w.append_nowait(next(rows("first", 1)))
            deadline = time.monotonic() + 10
            while w.store_backlog().files == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert w.store_backlog().files == 1  # the bound (0 MiB) is reached at once
            later = rows("x", 100, T0 + timedelta(hours=1))
            accepted = [r["uid"] for r in later if w.append_nowait(r)]
            assert len(accepted) == 40 and w.gaps == 60  # the queue filled, then refusals
            time.sleep(0.5)
            assert w.store_backlog().files == 1  # nothing more was drained into new files
            gate.up()
            assert w.wait_uploaded(20)
            w.flush()
            w.publish()
            assert w.wait_uploaded(20)
        finally:
            w.close()
    # reported as metadata gaps (audited by the daemons), saying why
    assert {reason for reason, _ in refused} == {"store_backlog"}
    assert sum(rows for _, rows in refused) == 60
    assert remote_uids(st, s3) == sorted(["first0", *accepted])


def test_a_waiting_outbox_is_uploaded_at_restart_and_numbers_never_go_back(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    with Outage(s3.endpoint) as gate:
        st = settings(bucket, gate.endpoint, metadata_publish_seconds=3600)
        gate.down()
        t = time.monotonic()
        with writer(tmp_path, st) as w:
            for row in rows("early", 20):
                w.append(row)
        assert time.monotonic() - t < 10  # closing with the store down does not hang
        assert len(list((tmp_path / "journal" / "proxy.outbox").rglob("*.parquet"))) == 1
        gate.up()
        with writer(tmp_path, st) as w:
            assert w.wait_uploaded(20)
            first = s3.keys(bucket)
            for row in rows("late", 20):
                w.append(row)
    keys = s3.keys(bucket)
    assert len(first) == 1 and len(keys) == 2 and keys[-1] > first[0]
    assert remote_uids(st, s3) == uids("early", 20, "late", 20)


def test_the_cli_publishes_to_the_configured_store(
    s3: S3Server, bucket: str, lbm: Lbm, corpus: Path
) -> None:
    """`[store] metadata_root` in lbm.toml reaches the writers the daemons and commands make
    (`lbm capture replay` here): flows land on the object store, none in DATA/metadata."""
    s3_store_config(lbm.data_dir, s3.endpoint, metadata_root=f"s3://{bucket}/force")
    res = lbm("capture", "replay", str(corpus / PCAP), "--json", check=True)
    flows = json.loads(res.stdout)["flows"]
    assert flows >= 1
    keys = s3.keys(bucket)
    assert keys and all(k.startswith("force/stream=") for k in keys)
    assert any("/stream=flow/" in k and "__replay__" in k for k in keys)
    assert not list((lbm.data_dir / "metadata").rglob("*.parquet"))
    st = store_settings(load_config(lbm.data_dir / "lbm.toml"), lbm.data_dir)
    assert read_stream(DataPaths(lbm.data_dir / "elsewhere", store=st), "flow").num_rows == flows


def test_a_local_metadata_root_elsewhere_is_where_rows_are_published(tmp_path: Path) -> None:
    st = StoreSettings(str(tmp_path / "srv" / "metadata"), "/x/a", "/x/k")
    paths = DataPaths(tmp_path / "data", store=st)
    with writer(paths.root, st) as w:
        for row in rows("l", 30):
            w.append(row)
    published = list((tmp_path / "srv" / "metadata").rglob("gw1__proxy__*.parquet"))
    assert len(published) == 1 and not (paths.root / "metadata").exists()
    assert sorted(read_stream(paths, "web").column("uid").to_pylist()) == uids("l", 30)
    assert not (paths.root / "journal" / "proxy.outbox").exists()

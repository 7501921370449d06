"""Metadata Parquet files: columns whose values are all different are stored without a
dictionary (less CPU, smaller files), the others with one; the rows read back unchanged with
DuckDB, also after compaction (docs/startup.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from store.clock import Clock
from store.metadata import MetadataWriter
from store.paths import DataPaths
from store.schemas import PLAIN_COLUMNS, STREAMS, dictionary_columns, schema

T0 = datetime(2026, 3, 1, 9, 10, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _flows(n: int, start: int) -> list[dict[str, object]]:
    return [
        {
            "ts": T0 + timedelta(seconds=i, microseconds=start),
            "uid": f"C{start}-{i}",
            "client_ip": f"10.0.{i % 4}.{i % 200}",
            "client_port": 30000 + i,
            "server_ip": "192.0.2.80",
            "server_port": 443,
            "proto": "tcp" if i % 3 else "udp",
            "service": "ssl",
            "duration": i / 7,
            "orig_bytes": 1000 + 37 * i,
            "conn_state": "SF",
            "community_id": f"1:{start}-{i}",
        }
        for i in range(n)
    ]


def _dictionary_used(path: Path) -> dict[str, bool]:
    meta = pq.ParquetFile(path).metadata
    out: dict[str, bool] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            name = col.path_in_schema.split(".")[0]
            out[name] = out.get(name, False) or col.has_dictionary_page
    return out


def _rows(path: Path | str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    return con.execute(
        f"SELECT uid, epoch_us(ts), client_ip, client_port, proto, duration, community_id "
        f"FROM read_parquet('{path}') ORDER BY uid"
    ).fetchall()


def test_plain_columns_are_streams_columns() -> None:
    names = {n for s in STREAMS for n in schema(s).names}
    assert names >= PLAIN_COLUMNS  # a typo here would silently keep a dictionary
    for stream in STREAMS:
        chosen = dictionary_columns(schema(stream))
        assert "ts" not in chosen and "uid" not in chosen and "gateway" in chosen
        assert set(chosen) == set(schema(stream).names) - PLAIN_COLUMNS


def test_written_and_compacted_files(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    clock = Clock(fixed=T0)
    w = MetadataWriter("flow", "replay", paths=paths, gateway="gw1", clock=clock, compact_delay=0)
    expected = []
    for start in (1, 2):
        rows = _flows(300, start)
        w.append_batch({k: [r[k] for r in rows] for k in rows[0]})
        w.publish()
        expected += rows
    files = sorted(paths.metadata.glob("stream=flow/**/*.parquet"))
    assert len(files) == 2
    for f in files:
        used = _dictionary_used(f)
        assert not used["uid"] and not used["ts"] and not used["community_id"]
        assert not used["client_port"] and not used["duration"]
        assert used["proto"] and used["client_ip"] and used["conn_state"]
    keys = ("uid", "ts", "client_ip", "client_port", "proto", "duration", "community_id")
    want = sorted(
        tuple((r[k] - EPOCH) // timedelta(microseconds=1) if k == "ts" else r[k] for k in keys)
        for r in expected
    )
    assert _rows(paths.metadata / "stream=flow" / "**" / "*.parquet") == want
    clock.set(T0 + timedelta(hours=2))
    assert w.compact() == 1
    w.close()
    (merged,) = sorted(paths.metadata.glob("stream=flow/**/*.parquet"))
    assert merged not in files
    used = _dictionary_used(merged)
    assert not used["uid"] and used["proto"]
    assert _rows(merged) == want

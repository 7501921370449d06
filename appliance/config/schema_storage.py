"""Options of `[store]` (issue 19): where metadata, sealed archives and wrapped keys live (a local
directory, the default, or S3-compatible object storage) and how to reach the object store.

Credentials come from here or from the standard AWS environment variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`); they are never logged, and `lbm config show` prints
`<redacted>` for them. `store_settings(cfg, data_dir)` turns a loaded configuration into the
`store.objectstore` settings the store's writers and readers take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config.option import Option, _between
from store import StoreError
from store.objectstore import S3Settings, StoreSettings, check_endpoint, check_root


def _root(value: Any) -> str | None:
    if not value:
        return None
    try:
        check_root(value)
    except StoreError as exc:
        return str(exc)
    return None


def _endpoint(value: Any) -> str | None:
    if not value:
        return None
    try:
        check_endpoint(value)
    except StoreError as exc:
        return str(exc)
    return None


STORAGE: list[Option] = [
    Option(
        "store",
        "metadata_root",
        str,
        "",
        "where metadata Parquet is published: empty (DATA/metadata), an absolute path, or "
        "s3://BUCKET/PREFIX (one prefix per gateway's credentials; the journal stays local)",
        _root,
    ),
    Option(
        "store",
        "archive_root",
        str,
        "",
        "where sealed archive segments, indexes and manifests go: empty (DATA/archive), an "
        "absolute path, or s3://BUCKET/PREFIX (open segments stay local until sealed)",
        _root,
    ),
    Option(
        "store",
        "keystore_root",
        str,
        "",
        "where wrapped keys live: empty (DATA/keystore), an absolute path, or s3://BUCKET/PREFIX "
        "in a bucket of its own without versioning (never the archive bucket)",
        _root,
    ),
    Option(
        "store",
        "endpoint",
        str,
        "",
        "object store endpoint URL, e.g. https://minio.example:9000 (empty: AWS's own, or "
        "AWS_ENDPOINT_URL)",
        _endpoint,
    ),
    Option("store", "region", str, "", "object store region (empty: AWS_REGION or us-east-1)"),
    Option(
        "store",
        "access_key_id",
        str,
        "",
        "object store access key id (empty: AWS_ACCESS_KEY_ID)",
        None,
        None,
        True,
    ),
    Option(
        "store",
        "secret_access_key",
        str,
        "",
        "object store secret key (empty: AWS_SECRET_ACCESS_KEY); prefer the environment or a "
        "credentials file readable by the gateway's user only",
        None,
        None,
        True,
    ),
    Option(
        "store",
        "upload_backlog_mb",
        int,
        2048,
        "local Parquet awaiting upload while the object store is unreachable; beyond it rows "
        "stay in the journal and new rows are refused as audited metadata gaps",
        _between(16, 10_000_000, "MiB"),
    ),
    # -- metadata on object storage (store.metadata.upload) --
    Option(
        "store",
        "metadata_publish_seconds",
        int,
        60,
        "with an s3:// metadata_root: how often journaled rows are published as one Parquet "
        "object per stream and hour (larger objects, no compaction on the store); a query sees "
        "rows within this plus the upload time",
        _between(1, 3600, "seconds"),
    ),
]


def store_settings(cfg: Any, data_dir: Path) -> StoreSettings:
    """The `[store]` section of a loaded configuration as `store.objectstore.StoreSettings`,
    with empty roots resolved to the data directory's own folders."""
    s3 = S3Settings(
        endpoint=cfg.get("store.endpoint"),
        region=cfg.get("store.region"),
        access_key_id=cfg.get("store.access_key_id"),
        secret_access_key=cfg.get("store.secret_access_key"),
    )
    return StoreSettings(
        metadata_root=cfg.get("store.metadata_root") or str(data_dir / "metadata"),
        archive_root=cfg.get("store.archive_root") or str(data_dir / "archive"),
        keystore_root=cfg.get("store.keystore_root") or str(data_dir / "keystore"),
        s3=s3,
        upload_backlog_mb=int(cfg.get("store.upload_backlog_mb")),
        metadata_publish_seconds=float(cfg.get("store.metadata_publish_seconds")),
    )

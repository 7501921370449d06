"""Where the store's roots live: a local directory or S3-compatible object storage, through
`pyarrow.fs` (S3FileSystem), never a hand-written client.

    settings = StoreSettings(metadata_root="s3://lbm-meta/gw1", ..., s3=S3Settings(endpoint=...))
    root = open_root(settings.metadata_root, settings.s3)
    root.fs.open_output_stream(root.path("stream=web", "date=...", "hour=05", NAME))  # one PUT
    root.remote            # True for s3://
    root.uri               # as configured, for messages (never holds credentials)

A root is `s3://BUCKET[/PREFIX]` or an absolute local path. Credentials come from `S3Settings`
(the `[store]` section) or, when empty there, from the standard AWS environment variables and
files (pyarrow's own lookup). `S3Settings.__repr__` never shows them; nothing here logs them.

Object storage has no rename: an object written with `open_output_stream` and closed appears
whole or not at all (a single PUT, or a multipart upload completed at close), which is what the
metadata publisher and the archive uploader rely on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from store import StoreError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# S3 bucket naming rules (3-63 characters, lower case, digits, dots and hyphens)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9._=-]+$")


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store. Empty fields fall back to the AWS environment."""

    endpoint: str = ""  # e.g. "http://127.0.0.1:9000"; empty: AWS_ENDPOINT_URL or AWS itself
    region: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        shown = f"endpoint={self.endpoint!r}, region={self.region!r}"
        return f"S3Settings({shown}, credentials=<redacted>)"


@dataclass(frozen=True)
class StoreSettings:
    """The three roots (`[store]`); empty config values already resolved to DATA/... paths."""

    metadata_root: str
    archive_root: str
    keystore_root: str
    s3: S3Settings = field(default_factory=S3Settings)
    # metadata on object storage (store.metadata.upload): local Parquet awaiting upload is
    # bounded by `upload_backlog_mb`; rows are published every `metadata_publish_seconds`
    upload_backlog_mb: int = 2048
    metadata_publish_seconds: float = 60.0

    @property
    def any_remote(self) -> bool:
        return any(
            is_object_uri(r) for r in (self.metadata_root, self.archive_root, self.keystore_root)
        )


def is_object_uri(value: str | Path) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(value: str) -> tuple[str, str]:
    """`s3://BUCKET[/PREFIX]` -> (bucket, prefix without slashes at either end)."""
    if not value.startswith("s3://"):
        raise StoreError(f"{value[:80]!r}: not an s3:// URI")
    rest = value[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise StoreError(
            f"{value[:80]!r}: bucket {bucket[:70]!r} is not a valid S3 bucket name "
            "(3-63 characters: a-z, 0-9, '.', '-')"
        )
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    for part in parts:
        if part in (".", "..") or not _PREFIX_PART_RE.fullmatch(part):
            raise StoreError(
                f"{value[:80]!r}: prefix part {part[:40]!r} must be letters, digits, '.', '_', "
                "'=' or '-' (no empty, '.' or '..' parts)"
            )
    return bucket, prefix


def check_root(value: str) -> None:
    """A configured root is an absolute local path or a valid s3:// URI; raises StoreError."""
    if "://" in value:
        if not value.startswith("s3://"):
            raise StoreError(f"{value[:80]!r}: only s3:// object store URIs are supported")
        parse_s3_uri(value)
        return
    if not os.path.isabs(value):
        raise StoreError(f"{value[:80]!r}: a local root must be an absolute path")


def check_endpoint(value: str) -> tuple[str, str]:
    """`http(s)://HOST[:PORT]` -> (scheme, "HOST:PORT"); raises StoreError naming the problem."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreError(f"{value[:80]!r}: endpoint must be http://HOST[:PORT] or https://...")
    if parts.username or parts.password:
        raise StoreError(
            "endpoint must not carry credentials (use access_key_id/secret_access_key)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise StoreError(f"{value[:80]!r}: endpoint must not have a path or query")
    try:
        port = parts.port
    except ValueError:
        raise StoreError(f"{value[:80]!r}: bad port") from None
    return parts.scheme, parts.netloc if port else parts.hostname


@dataclass(frozen=True)
class StoreRoot:
    """A root opened on its filesystem. `path(...)` joins parts below it with '/'."""

    uri: str
    fs: pafs.FileSystem
    base: str
    remote: bool

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *(p.strip("/") for p in parts if p)])

    @property
    def bucket(self) -> str | None:
        return self.base.split("/", 1)[0] if self.remote else None


def s3_filesystem(s3: S3Settings, **extra: Any) -> pafs.S3FileSystem:
    """A pyarrow S3FileSystem for `s3` (empty fields: the AWS environment's values)."""
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = dict(extra)
    endpoint = (
        s3.endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL", "")
    )
    if endpoint:
        scheme, netloc = check_endpoint(endpoint)
        kwargs["scheme"] = scheme
        kwargs["endpoint_override"] = netloc
    region = s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs["region"] = region or "us-east-1"
    if s3.access_key_id or s3.secret_access_key:
        if not (s3.access_key_id and s3.secret_access_key):
            raise StoreError("[store] access_key_id and secret_access_key must be set together")
        kwargs["access_key"] = s3.access_key_id
        kwargs["secret_key"] = s3.secret_access_key
        if s3.session_token:
            kwargs["session_token"] = s3.session_token
    return pafs.S3FileSystem(**kwargs)


def open_root(value: str | Path, s3: S3Settings | None = None, **fs_options: Any) -> StoreRoot:
    """Open a configured root: a local path (LocalFileSystem) or `s3://BUCKET/PREFIX`."""
    import pyarrow.fs as pafs

    text = str(value)
    if is_object_uri(text):
        bucket, prefix = parse_s3_uri(text)
        fs = s3_filesystem(s3 or S3Settings(), **fs_options)
        base = f"{bucket}/{prefix}" if prefix else bucket
        return StoreRoot(uri=text, fs=fs, base=base, remote=True)
    check_root(text)
    return StoreRoot(
        uri=text, fs=pafs.LocalFileSystem(), base=text.rstrip("/") or "/", remote=False
    )

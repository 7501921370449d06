"""The key store's second place: `[store] keystore_root`, its own bucket (or directory).

Wrapped keys are written locally first (keystore/REF/...), as always: the daemons must archive
while the object store is down. When a sealed segment is uploaded, its wrapped key (and the
authorisation's auth.age / auth.pub) is mirrored to the keystore root by store/archive_upload.py.
`KeyStore` (store/keys.py) reads a key missing locally from here, and shredding deletes both.

Rules checked before anything is mirrored (`check_store_roots`, a StoreError naming the keys):
- the keystore root never shares a bucket (or a directory tree) with the archive root, so an
  archive copy never carries the keys that open it;
- the keystore bucket has never had versioning (S3 keeps every old version of a deleted
  object, which would un-shred a key); object lock needs versioning, so it is refused too.

Every remote call has a short timeout and bounded retries (an outage raises OSError quickly).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from store import StoreError
from store.objectstore import (
    S3Settings,
    StoreRoot,
    StoreSettings,
    check_endpoint,
    is_object_uri,
    open_root,
    parse_s3_uri,
)

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.")
TIMEOUTS: dict[str, float] = {"connect_timeout": 3.0, "request_timeout": 10.0}


def open_store_root(uri: str, s3: S3Settings) -> StoreRoot:
    """`open_root` with bounded timeouts and retries, so an outage fails fast."""
    if not is_object_uri(uri):
        return open_root(uri, s3)
    import pyarrow.fs as pafs

    return open_root(
        uri, s3, **TIMEOUTS, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    )


def boto_client(s3: S3Settings) -> Any:
    """A boto3 S3 client for bucket-level questions pyarrow cannot ask (versioning)."""
    import boto3
    from botocore.config import Config

    endpoint = (
        s3.endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL", "")
    )
    kwargs: dict[str, Any] = {
        "region_name": s3.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "config": Config(
            connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        ),
    }
    if endpoint:
        scheme, netloc = check_endpoint(endpoint)
        kwargs["endpoint_url"] = f"{scheme}://{netloc}"
    if s3.access_key_id and s3.secret_access_key:
        kwargs["aws_access_key_id"] = s3.access_key_id
        kwargs["aws_secret_access_key"] = s3.secret_access_key
        if s3.session_token:
            kwargs["aws_session_token"] = s3.session_token
    return boto3.client("s3", **kwargs)


def _shown(uri: str) -> str:
    return uri[:120]


def check_store_roots(settings: StoreSettings) -> None:
    """Refuse a keystore root that shares the archive's bucket or tree, or a versioned
    keystore bucket. Raises StoreError naming both `[store]` keys; OSError if unreachable."""
    arch, keys = settings.archive_root, settings.keystore_root
    if is_object_uri(arch) and is_object_uri(keys):
        if parse_s3_uri(arch)[0] == parse_s3_uri(keys)[0]:
            raise StoreError(
                f"[store] keystore_root ({_shown(keys)}) is in the same bucket as [store] "
                f"archive_root ({_shown(arch)}): wrapped keys must never be stored with the "
                "archives, or a copy of the bucket opens every segment and shredding a key "
                "does not make the archive unreadable; give the keys their own bucket"
            )
    elif not is_object_uri(arch) and not is_object_uri(keys):
        a, k = os.path.realpath(arch), os.path.realpath(keys)
        if a == k or k.startswith(a + os.sep) or a.startswith(k + os.sep):
            raise StoreError(
                f"[store] keystore_root ({_shown(keys)}) and [store] archive_root "
                f"({_shown(arch)}) overlap: keep the wrapped keys apart from the archives"
            )
    if is_object_uri(keys):
        bucket = parse_s3_uri(keys)[0]
        try:
            status = boto_client(settings.s3).get_bucket_versioning(Bucket=bucket).get("Status")
        except Exception as exc:  # botocore's errors: unreachable, no bucket, no permission
            raise OSError(
                f"[store] keystore_root: cannot read bucket {bucket}'s versioning "
                f"({type(exc).__name__})"
            ) from None
        if status in ("Enabled", "Suspended"):
            raise StoreError(
                f"[store] keystore_root ({_shown(keys)}): bucket {bucket} has versioning "
                f"{status.lower()}: a versioned bucket keeps every old version of a shredded "
                "key, so shredding would not destroy it; use a bucket that never had "
                "versioning (nor object lock)"
            )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class KeyMirror:
    """The keystore root: keys at ROOT/REF/NAME (NAME `auth.age`, `auth.pub`, `NNNNNN.age`)."""

    root: StoreRoot

    def _path(self, ref: str, name: str) -> str:
        if not name or not set(name) <= NAME_CHARS or name.startswith("."):
            raise StoreError(f"key name {name!r} is not a key store name")
        return self.root.path(ref, name)

    def get(self, ref: str, name: str) -> bytes | None:
        import pyarrow.fs as pafs

        path = self._path(ref, name)
        if self.root.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.root.fs.open_input_stream(path) as fh:
            return bytes(fh.read())

    def put(self, ref: str, name: str, data: bytes) -> bool:
        """Write NAME unless the same bytes are there; read it back. True if written."""
        if self.get(ref, name) == data:
            return False
        path = self._path(ref, name)
        if not self.root.remote:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with self.root.fs.open_output_stream(path) as out:
            out.write(data)
        back = self.get(ref, name)
        if back is None or sha256(back) != sha256(data):
            raise StoreError(f"keystore root: {ref}/{name} read back different (not stored)")
        return True

    def delete(self, ref: str, name: str) -> bool:
        """Delete NAME; True if it existed. Checks it is gone afterwards."""
        import pyarrow.fs as pafs

        path = self._path(ref, name)
        if self.root.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return False
        self.root.fs.delete_file(path)
        if self.root.fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise StoreError(f"keystore root: {ref}/{name} still present after deletion")
        return True

    def names(self, ref: str) -> list[str]:
        """The key objects held for REF."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.root.path(ref), allow_not_found=True)
        return sorted(
            i.path.rsplit("/", 1)[1]
            for i in self.root.fs.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.rsplit("/", 1)[1]
        )

    def delete_all(self, ref: str) -> int:
        """Delete every key object of REF (a whole authorisation shredded); returns how many."""
        return sum(self.delete(ref, name) for name in self.names(ref))


def open_key_mirror(settings: StoreSettings, local_keystore: str) -> KeyMirror | None:
    """The mirror, or None when the keystore root is the local keystore itself."""
    uri = settings.keystore_root
    if not is_object_uri(uri) and os.path.realpath(uri) == os.path.realpath(local_keystore):
        return None
    return KeyMirror(open_store_root(uri, settings.s3))

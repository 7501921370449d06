"""A real S3-protocol server on loopback for the object-store tests: moto's standalone server
(from PyPI), standing in for MinIO or Ceph RGW, run as a subprocess. Not a mock of our code: the
store talks to it through pyarrow's S3FileSystem (the AWS SDK) over HTTP exactly as it would to
MinIO.

    with S3Server() as s3:
        s3.make_bucket("lbm-meta")                     # boto3, admin side
        s3.endpoint                                    # "http://127.0.0.1:PORT"
        with Outage(s3.endpoint) as gate:              # a TCP relay that can go down
            gate.endpoint                              # give this one to the gateway
            gate.down(); ...; gate.up()                # "store unreachable", data kept

moto keeps its data in memory, so an outage is simulated by `Outage` (a loopback TCP relay
that refuses and drops connections while down) rather than by stopping the server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from store.objectstore import S3Settings, StoreSettings

ACCESS_KEY = "testing-access-key"  # moto accepts any credentials; these are test-only values
SECRET_KEY = "testing-secret-key-not-real"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's standalone S3 server as a subprocess on 127.0.0.1."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_dir = log_dir

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a process that should reach this server with AWS defaults."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> S3Server:
        for _ in range(5):
            self.port = _free_port()
            log = open(self.log_dir / "moto.log", "ab") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1),
                ):
                    return self
                time.sleep(0.1)
            self.stop()
        raise RuntimeError("moto S3 server did not start on loopback")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client (the test's admin view of the bucket; the product uses pyarrow)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def make_bucket(
        self, name: str, *, versioning: bool = False, object_lock: bool = False
    ) -> None:
        c = self.client()
        kwargs: dict[str, Any] = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        c.create_bucket(**kwargs)
        if versioning and not object_lock:
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        c = self.client()
        out: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)


class Outage:
    """A loopback TCP relay in front of an endpoint; `down()` closes every connection and
    refuses new ones (the store is unreachable), `up()` serves again. The data behind it stays."""

    def __init__(self, target: str) -> None:
        host_port = target.split("://", 1)[1]
        host, _, port = host_port.partition(":")
        self.target = (host, int(port))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self._up.is_set():
                with contextlib.suppress(OSError):
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                client.close()  # reset: the store is unreachable
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop = True
        self.down()
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_store(data_dir: Path, **values: str | int) -> None:
    """Set `[store]` keys in DATA/lbm.toml (the section `lbm init` wrote), e.g.
    `set_store(d, metadata_root="s3://b/gw1", endpoint=s3.endpoint)`."""
    import json
    import re

    cfg = data_dir / "lbm.toml"
    head, sep, store = cfg.read_text().partition("\n[store]\n")
    if not sep:
        raise AssertionError(f"{cfg}: no [store] section")
    section, nxt, rest = store.partition("\n[")
    for key, value in values.items():
        shown = json.dumps(value)
        section, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {shown}", section)
        if n != 1:
            raise AssertionError(f"[store] {key} not found in {cfg}")
    cfg.write_text(head + sep + section + nxt + rest)


def s3_store_config(data_dir: Path, server_endpoint: str, **roots: str) -> None:
    """Point DATA's `[store]` at the test server with the test credentials."""
    set_store(
        data_dir,
        endpoint=server_endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        **roots,
    )


def s3_archive_config(
    data_dir: Path, server_endpoint: str, archive_root: str, keystore_root: str
) -> StoreSettings:
    """Point DATA's archive and keystore roots at the test server (`s3_store_config`) and
    return the same roots as the `StoreSettings` an `Archive` or `KeyStore` is given."""
    s3_store_config(
        data_dir, server_endpoint, archive_root=archive_root, keystore_root=keystore_root
    )
    return StoreSettings(
        metadata_root=str(data_dir / "metadata"),
        archive_root=archive_root,
        keystore_root=keystore_root,
        s3=S3Settings(
            endpoint=server_endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        ),
    )

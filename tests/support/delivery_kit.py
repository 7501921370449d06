"""Test kit for the spool and the delivery worker (mail-delivery's tests).

`Relay` runs a real `Spool` and a real `DeliveryWorker` in an event loop of its own thread (so a
test can drive `RecordingUpstream` and the worker side by side); messages enter through
`Spool.accept` exactly as the relay's handler puts them there. Rows are collected by `RowSink`
(the worker's `rows` callable: the boundary to `MetadataWriter.append_nowait`). `make_tls`
makes a test CA and a server certificate with the real `openssl`.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.config.load import defaults
from appliance.mail.delivery import DeliveryWorker
from appliance.mail.spool import Envelope, Spool, new_id


def smtp_config(**smtp: Any) -> Config:
    """The default configuration with `[smtp]` options overridden (retries fast for tests)."""
    config = defaults()
    config.values.update({"smtp.retry_initial_seconds": 1, "smtp.retry_max_seconds": 2})
    config.values.update({f"smtp.{k}": v for k, v in smtp.items()})
    return config


class RowSink:
    """The worker's `rows` callable: keeps every row, thread-safe."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, row: dict[str, Any]) -> bool:
        with self._lock:
            self.rows.append(dict(row))
        return True

    def outcomes(self, uid: str | None = None) -> list[tuple[str, str]]:
        with self._lock:
            return [(r["outcome"], r["rcpt_to"]) for r in self.rows if uid in (None, r["uid"])]

    def of(self, outcome: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.rows if r["outcome"] == outcome]


def envelope(
    rcpts: list[str] | None = None,
    *,
    mail_from: str = "alice@force.example",
    size: int = 0,
    record_ids: list[str] | None = None,
    **extra: Any,
) -> Envelope:
    rcpts = rcpts or ["bob@remote.example"]
    return Envelope(
        id=new_id(),
        mail_from=mail_from,
        rcpts=list(rcpts),
        received=time.time(),
        size=size,
        client_ip="127.0.0.1",
        client_port=40000,
        helo="client.test",
        direction="outbound" if mail_from.endswith("@force.example") else "inbound",
        principals={r: "p12345" for r in rcpts},
        record_ids=list(record_ids or []),
        **extra,
    )


class Relay:
    """A spool and a delivery worker on `spool_dir`, in their own event loop thread."""

    def __init__(
        self,
        spool_dir: Path,
        config: Config,
        *,
        rows: RowSink | None = None,
        archive_closed: Callable[[str], bool] = lambda record: True,
        audit: Any = None,
        clock: Any = None,
        flush_rows: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.rows = rows or RowSink()
        self.flush_rows = flush_rows
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.spool_dir = spool_dir
        self.config = config
        self.archive_closed = archive_closed
        self.audit = audit
        self.clock = clock
        self.spool: Spool | None = None
        self.worker: DeliveryWorker | None = None

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Relay:
        async def go() -> None:
            self.spool = Spool(self.spool_dir, clock=self.clock, audit=self.audit, actor="tester")
            self.spool.lock()  # as `lbm smtp run` does
            self.worker = DeliveryWorker(
                self.spool,
                self.config,
                rows=self.rows,
                archive_closed=self.archive_closed,
                audit=self.audit,
                actor="tester",
                clock=self.clock,
                gateway="gw1",
                flush_rows=self.flush_rows,
            )
            self.worker.start()

        self.call(go())
        return self

    def submit(self, env: Envelope, message: bytes, *, wake: bool = True) -> Envelope:
        """Accept `message` (durable when this returns) and wake the worker, as the handler."""
        assert self.spool is not None and self.worker is not None
        env.size = env.size or len(message)

        async def go() -> None:
            assert self.spool is not None and self.worker is not None
            await self.spool.accept(env, message)
            if wake:
                self.worker.wake(env.id)

        self.call(go())
        return env

    def stop(self) -> None:
        async def go() -> None:
            if self.worker is not None:
                await self.worker.stop()
            if self.spool is not None:
                await self.spool.close()

        self.call(go(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spooled(self) -> list[str]:
        return sorted(p.name for p in self.spool_dir.glob("*.json"))


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def make_tls(directory: Path, name: str = "localhost") -> dict[str, Path]:
    """A test CA (`ca`), a server certificate for `name` signed by it (`cert`, `key`), and an
    unrelated CA (`other_ca`) that must not verify it. Real `openssl`."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {k: directory / f"{k}.pem" for k in ("ca", "ca_key", "cert", "key", "other_ca", "ok")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    for ca, key in (("ca", "ca_key"), ("other_ca", "ok")):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(out[key]), "-out", str(out[ca]), "-days", "2", "-subj",
            f"/CN=lbm test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    csr = directory / "server.csr"
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
        str(out["key"]), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{name},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(out["ca"]), "-CAkey", str(out["ca_key"]),
        "-CAcreateserial", "-out", str(out["cert"]), "-days", "2",
        "-extfile", str(ext))  # fmt: skip
    return out

"""The relay's life in one asyncio loop: listen, signal readiness, tick, stop cleanly.

`serve(...)` binds `listen_host:listen_port` with `loop.create_server` (aiosmtpd's `Controller`
cannot take port 0), writes the real port to `run/smtp.port`, then `run/smtp.ready` (the pid) and
READY=1 to systemd when NOTIFY_SOCKET is set. Every second `on_tick` runs in a thread (the archive
closes due segments). SIGTERM or SIGINT: stop accepting connections, let sessions in DATA finish
(others get `421`), then the caller's `on_stop` stops the delivery worker, flushes metadata and
closes the archive; the readiness and port files are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiosmtpd.smtp import SMTP

from appliance.mail.engine import Sessions
from store.fsutil import atomic_write, ensure_dir
from store.readiness import announce_ready

TICK_SECONDS = 1.0
SHUTDOWN_GRACE = 30.0


async def serve(
    factory: Callable[[], SMTP],
    sessions: Sessions,
    *,
    host: str,
    port: int,
    run_dir: Path,
    name: str = "smtp",
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_tick: Callable[[], object] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or `stop` is set); returns the port that was bound."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(factory, host=host, port=port)
    bound = int(server.sockets[0].getsockname()[1])
    ensure_dir(run_dir)
    port_file, ready = run_dir / f"{name}.port", run_dir / f"{name}.ready"
    ticker: asyncio.Task[None] | None = None
    try:
        if on_start is not None:
            await on_start()
        atomic_write(port_file, f"{bound}\n".encode())
        announce_ready(run_dir, name)
        if on_tick is not None:
            ticker = loop.create_task(_tick(on_tick))
        await stop.wait()
    finally:
        server.close()
        await sessions.shutdown(SHUTDOWN_GRACE)
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        try:
            if on_stop is not None:
                await on_stop()
        finally:
            ready.unlink(missing_ok=True)
            port_file.unlink(missing_ok=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return bound


async def _tick(fn: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        with contextlib.suppress(Exception):  # a failing tick is audited by the archive itself
            await asyncio.to_thread(fn)

"""The embedded default's next hop: a local maildir (`./lbm-maildrop`) standing for the upstream.

Used when `[smtp] upstream_host` is empty. It lives outside the data directory (it stands for
another system). Each message is written exactly as it would be relayed (the `Received:` line
and the DATA payload, bytes untouched) to `tmp/`, fsynced, then renamed into `new/` (the maildir
protocol: a reader never sees half a message) and the directory fsynced. One file per message,
whatever the number of recipients; every recipient then counts as delivered (`250 2.0.0`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from appliance.mail.smtp_client import DataResult, Reply, SmtpClientError
from store.fsutil import ensure_dir, fsync_dir

_counter = itertools.count()


class Maildrop:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.name = f"maildir:{self.directory}"

    def _dirs(self) -> tuple[Path, Path]:
        for sub in ("tmp", "new", "cur"):
            ensure_dir(self.directory / sub)
        return self.directory / "tmp", self.directory / "new"

    def write(self, message: bytes) -> Path:
        """Deliver one message into new/ atomically; returns its path. Raises OSError."""
        tmp_dir, new_dir = self._dirs()
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{host}"
        tmp = tmp_dir / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        target = new_dir / name
        os.replace(tmp, target)
        fsync_dir(new_dir)
        return target

    async def send(self, mail_from: str, rcpts: list[str], message: bytes) -> DataResult:
        """The SMTP-shaped outcome of writing to the maildir (one transport interface)."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.write, message)
        except OSError as exc:
            raise SmtpClientError(f"{self.name}: cannot write ({exc.strerror})") from None
        ok = Reply(250, "2.0.0 written to the maildrop")
        return DataResult({r: Reply(250, "2.1.5 OK") for r in rcpts}, ok)

    async def close(self) -> None:
        return None

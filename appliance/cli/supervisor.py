"""The supervisor behind `lbm run`: start each enabled daemon as its own process, forward
signals, restart a daemon that dies (with back-off), and stop them all on Ctrl-C or SIGTERM.

Each daemon runs the same command line its systemd unit would, so `lbm run` on a laptop and the
units on a gateway exercise the same code.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RESTART_WINDOW = 60.0
MAX_RESTARTS = 5
STOP_GRACE = 10.0


@dataclass
class Daemon:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(
        self, daemons: list[Daemon], log: Callable[[str], None], env: dict[str, str] | None = None
    ) -> None:
        self.daemons = daemons
        self.log = log
        self.env = env
        self.stopping = False
        self.exit_code = 0

    def _start(self, daemon: Daemon) -> None:
        daemon.starts = [t for t in daemon.starts if time.monotonic() - t < RESTART_WINDOW]
        daemon.starts.append(time.monotonic())
        daemon.proc = subprocess.Popen(daemon.argv, env=self.env, start_new_session=True)
        self.log(f"started {daemon.name} (pid {daemon.proc.pid})")

    def _signal_all(self, sig: int) -> None:
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon.proc.pid, sig)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._signal_all(signal.SIGHUP)  # daemons reload their configuration
            return
        if not self.stopping:
            self.log(f"received {signal.Signals(signum).name}: stopping all daemons")
        self.stopping = True

    def stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for daemon in self.daemons:
            if daemon.proc is None:
                continue
            remaining = max(0.1, deadline - time.monotonic())
            try:
                daemon.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.log(f"{daemon.name} did not stop within {STOP_GRACE:.0f} s: killing it")
                daemon.proc.kill()
                daemon.proc.wait()
            self.log(f"{daemon.name} stopped (exit {daemon.proc.returncode})")

    def run(
        self,
        ready_file: Path | None = None,
        on_ready: Callable[[list[Daemon]], bool] | None = None,
    ) -> int:
        """Start every daemon and supervise until a signal. `on_ready` is called on each
        supervision round until it returns True (e.g. once every daemon reported readiness)."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        for daemon in self.daemons:
            self._start(daemon)
        if ready_file is not None:
            ready_file.write_text(f"{os.getpid()}\n")
        try:
            while not self.stopping:
                time.sleep(0.2)
                if on_ready is not None and on_ready(self.daemons):
                    on_ready = None
                for daemon in self.daemons:
                    assert daemon.proc is not None
                    code = daemon.proc.poll()
                    if code is None or self.stopping:
                        continue
                    self.log(f"{daemon.name} exited with status {code}")
                    if len(daemon.starts) >= MAX_RESTARTS:
                        self.log(
                            f"{daemon.name} failed {MAX_RESTARTS} times within "
                            f"{RESTART_WINDOW:.0f} s: stopping everything"
                        )
                        self.exit_code = 1
                        self.stopping = True
                        break
                    time.sleep(min(5.0, 0.5 * len(daemon.starts)))
                    self._start(daemon)
        finally:
            self.stop_all()
            if ready_file is not None:
                ready_file.unlink(missing_ok=True)
        return self.exit_code


class AlreadyRunning(Exception):
    """Another `lbm run` holds the data directory's run lock."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running, pid {pid if pid is not None else 'unknown'}")
        self.pid = pid


def acquire_run_lock(path: Path) -> int:
    """Take `path` with an exclusive flock and write our pid into it; return the descriptor,
    which must stay open while we run. The kernel drops the lock when the process ends, so a
    file left by a killed run blocks nobody. Raises AlreadyRunning naming the holder's pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            pid = int(text) if text.isdigit() else None
        finally:
            os.close(fd)
        raise AlreadyRunning(pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lbm_argv(data_dir: Path, config: Path | None, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    return [*argv, *args]

"""Benchmark: `lbm smtp run` (spool fsynced before 250, delivery to a local sink inside the
measured window) against bare SMTP servers, side by side in one run, driven by Postfix's
`smtp-source`.

Run: .venv/bin/python bench/bench_smtp.py [--quick] [--sessions 20] [--size 10240]
                                          [--messages 20000] [--rounds 1] [--dir DIR]

Targets, each a separate process on loopback, each sent the same `smtp-source -s S -l L -m M`
load (one message per connection unless `--reuse`, smtp-source's `-d`):

- `aiosmtpd-discard`: a bare aiosmtpd server answering 250 and dropping the message;
- `aiosmtpd-fsync-each`: a bare aiosmtpd server writing each message to its own file and fsyncing
  it (file and directory) before 250, in the event loop, one message at a time;
- `postfix-smtp-sink`: Postfix's C test server (discards);
- `lbm-smtp`: `lbm smtp run` on a fresh `lbm init` data dir, delivering to a Postfix `smtp-sink`
  upstream; the window ends when smtp-source is done AND the spool is empty AND the sink has
  counted every message.

Prints messages/s, wall seconds and peak RSS (VmHWM of the server process) per target, and the
ratios against the floors of issue 15: lbm >= 1.0x fsync-each, lbm >= 0.5x discard. With
`--rounds N` the targets run round-robin N times and the best rate of each is kept, so a busy
machine weighs on all alike. Exit status 0 whatever the ratios (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENDER = "bench@force.example"
RCPT = "sink@elsewhere.example"


# -- the bare aiosmtpd servers (run as `bench_smtp.py --serve MODE`) ---------------------------


def serve(mode: str, port_file: Path, directory: Path) -> None:
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Handler:
        def __init__(self) -> None:
            self.n = 0
            self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            if mode == "fsync":
                self.n += 1
                fd = os.open(directory / f"{self.n}.msg", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    os.write(fd, envelope.original_content or b"")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.fsync(self.dir_fd)
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="bench.test", loop=loop), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.rename(port_file)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


# -- helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.01,
         fail: Callable[[], str] | None = None) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or (fail is not None and fail()):
            why = fail() if fail is not None else ""
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} {why}")
        time.sleep(poll)


def _stuck(spool: Path, log: Path) -> str:
    """A reason to give up early: a message was deferred (the relay writes its retry time)."""
    for env in spool.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(env.read_bytes()).get("attempts", 0) > 0:
                return f"(a delivery failed and is retried; see {log})"
    return ""


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sink_argv(port: int) -> list[str]:
    argv = ["smtp-sink", "-c"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
    return [*argv, f"127.0.0.1:{port}", "256"]


def sink_count(out: Path) -> int:
    """smtp-sink -c prints running counters (`... mesg=N`) to stdout."""
    found = re.findall(rb"mesg=(\d+)", out.read_bytes()) if out.exists() else []
    return int(found[-1]) if found else 0


@contextlib.contextmanager
def started(argv: list[str], ready: Callable[[], bool], stdout: Path, what: str,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    with stdout.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        wait(lambda: proc.poll() is None and ready(), 60, what)
        yield proc
    finally:
        stop(proc)


@dataclass
class Load:
    sessions: int
    size: int
    messages: int
    reuse: bool

    def argv(self, port: int) -> list[str]:
        argv = ["smtp-source", "-s", str(self.sessions), "-l", str(self.size)]
        argv += ["-m", str(self.messages), "-f", SENDER, "-t", RCPT]
        return [*argv, *(["-d"] if self.reuse else []), f"127.0.0.1:{port}"]

    def run(self, port: int) -> None:
        done = subprocess.run(self.argv(port), capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"smtp-source failed ({done.returncode}): {done.stderr[-2000:]}")


@dataclass
class Result:
    name: str
    seconds: float
    rss_kib: int

    def rate(self, messages: int) -> float:
        return messages / self.seconds


# -- the targets ---------------------------------------------------------------------------------


def bare(mode: str, load: Load, work: Path) -> Result:
    directory = Path(tempfile.mkdtemp(prefix=f"bare-{mode}-", dir=work))
    port_file = directory / "port"
    argv = [sys.executable, __file__, "--serve", mode, "--port-file", str(port_file),
            "--dir", str(directory)]  # fmt: skip
    with started(argv, port_file.exists, directory / "server.log", f"aiosmtpd {mode}") as proc:
        t0 = time.monotonic()
        load.run(int(port_file.read_text()))
        seconds = time.monotonic() - t0
        rss = peak_rss_kib(proc.pid)
    if mode == "fsync":
        stored = len(list(directory.glob("*.msg")))
        assert stored == load.messages, f"fsync server stored {stored} of {load.messages}"
    shutil.rmtree(directory)
    name = {"discard": "aiosmtpd-discard", "fsync": "aiosmtpd-fsync-each"}[mode]
    return Result(name, seconds, rss)


def postfix_sink(load: Load, work: Path) -> Result:
    port = free_port()
    out = work / "smtp-sink.out"
    with started(sink_argv(port), lambda: _listening(port), out, "smtp-sink") as proc:
        t0 = time.monotonic()
        load.run(port)
        wait(lambda: sink_count(out) >= load.messages, 60, "smtp-sink to count every message")
        seconds = time.monotonic() - t0
        rss = peak_rss_kib(proc.pid)
    return Result("postfix-smtp-sink", seconds, rss)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _set_options(config: Path, section: str, options: dict[str, str]) -> None:
    lines = config.read_text().split("\n")
    at = lines.index(f"[{section}]")
    for key, value in options.items():
        end = next((j for j in range(at + 1, len(lines)) if lines[j].startswith("[")), len(lines))
        hit = [j for j in range(at + 1, end) if lines[j].startswith(f"{key} = ")]
        if hit:
            lines[hit[0]] = f"{key} = {value}"
        else:
            lines.insert(at + 1, f"{key} = {value}")
    config.write_text("\n".join(lines))


def lbm_smtp(load: Load, work: Path) -> Result:
    data = Path(tempfile.mkdtemp(prefix="lbm-", dir=work)) / "data"
    lbm = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data)]
    subprocess.run([*lbm, "init"], cwd=REPO, check=True, capture_output=True)
    sink_port = free_port()
    sink_out = data.parent / "smtp-sink.out"
    # smtp-sink offers no STARTTLS: "optional" (the embedded default is "required")
    opts = {"upstream_host": '"127.0.0.1"', "upstream_port": str(sink_port),
            "upstream_starttls": '"optional"'}  # fmt: skip
    _set_options(data / "lbm.toml", "smtp", opts)
    run = data / "run"
    spool = data / "spool"

    def ready() -> bool:
        return (run / "smtp.ready").exists() and (run / "smtp.port").exists()

    def spool_empty() -> bool:
        return not any(p.name.endswith((".msg", ".json")) for p in spool.iterdir())

    log = data.parent / "relay.log"
    env = {k: v for k, v in os.environ.items() if k != "LBM_FAKE_NOW"}
    with (
        started(sink_argv(sink_port), lambda: _listening(sink_port), sink_out, "smtp-sink"),
        started([*lbm, "smtp", "run"], ready, log, "lbm smtp run", env=env) as relay,
    ):
        port = int((run / "smtp.port").read_text())
        t0 = time.monotonic()
        load.run(port)
        wait(spool_empty, 600, "the spool to drain", fail=lambda: _stuck(spool, log))
        wait(lambda: sink_count(sink_out) >= load.messages, 60, "the sink to count them all")
        seconds = time.monotonic() - t0
        rss = peak_rss_kib(relay.pid)
    delivered = sink_count(sink_out)
    assert delivered == load.messages, f"lbm delivered {delivered} of {load.messages}"
    shutil.rmtree(data.parent)
    return Result("lbm-smtp", seconds, rss)


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--serve", choices=["discard", "fsync"], help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2,000 messages instead of 20,000")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240, help="message size in bytes")
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--reuse", action="store_true", help="several messages per connection (-d)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where spools and files go (a disk)")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port_file, args.dir)
        return
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: servers stopped, work dir removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's postfix package")
    messages = args.messages or (2000 if args.quick else 20000)
    load = Load(args.sessions, args.size, messages, args.reuse)
    work = Path(tempfile.mkdtemp(prefix="bench-smtp-", dir=args.dir))
    print(f"smtp-source -s {load.sessions} -l {load.size} -m {messages}"
          f"{' -d' if load.reuse else ''}; files in {work} ({os.cpu_count()} CPUs)",
          flush=True)  # fmt: skip
    targets: list[Callable[[], Result]] = [
        lambda: bare("discard", load, work),
        lambda: bare("fsync", load, work),
        lambda: postfix_sink(load, work),
        lambda: lbm_smtp(load, work),
    ]
    best: dict[str, Result] = {}
    try:
        for rnd in range(args.rounds):
            for target in targets:
                r = target()
                rss = r.rss_kib / 1024
                print(f"  round {rnd + 1}: {r.name:20} {r.rate(messages):9.0f} msg/s "
                      f"{r.seconds:8.2f} s  peak RSS {rss:7.1f} MiB", flush=True)  # fmt: skip
                if r.name not in best or r.seconds < best[r.name].seconds:
                    best[r.name] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'target':20} {'msg/s':>9} {'seconds':>8} {'peak RSS MiB':>13}")
    for r in best.values():
        print(f"{r.name:20} {r.rate(messages):9.0f} {r.seconds:8.2f} {r.rss_kib / 1024:13.1f}")
    lbm = best["lbm-smtp"].rate(messages)
    for name, floor in (("aiosmtpd-fsync-each", 1.0), ("aiosmtpd-discard", 0.5)):
        ratio = lbm / best[name].rate(messages)
        verdict = "meets" if ratio >= floor else "BELOW"
        print(f"lbm-smtp / {name}: {ratio:.2f}x ({verdict} the {floor:.1f}x floor)")


if __name__ == "__main__":
    main()

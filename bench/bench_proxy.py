"""Benchmark: `lbm proxy run` against plain mitmdump (and Squid as the far anchor), on loopback.

Run: .venv/bin/python bench/bench_proxy.py [--quick] [--requests N] [--large-requests M]
                                           [--concurrency C] [--only NAME ...]

A fast local origin (this file with `--serve`: a bare asyncio HTTP/1.1 server with keep-alive,
fixed 1 KiB and 1 MiB answers, TLS with a test CA leaf for `localhost`) is measured, side by side
in one run:

- direct (no proxy), HTTPS and plain HTTP: the ceiling of the client + origin on this machine;
- HTTPS, non-subject: `mitmdump --ignore-hosts '.*'` vs `lbm proxy run` for a principal with no
  authorisation (both pass the TLS connection through unopened);
- plain HTTP, non-subject: `mitmdump` vs `lbm proxy run` (metadata row per request);
- HTTPS, subject: `mitmdump -w FLOWS` (intercepting, writing its flow file) vs `lbm proxy run`
  for a granted principal (intercepting, archiving every request and response);
- Squid 5 as a CONNECT tunnel (Debian's build uses GnuTLS, so no ssl_bump peek/splice: the tunnel
  is the splice without the peek), HTTPS and plain HTTP.

The client is curl (C, libcurl keep-alive): C processes in parallel, each fetching its share of
the URLs from one config file over one kept-alive connection (through the proxy: one CONNECT
tunnel, then requests inside it), `-w` giving each transfer's status and total time. Printed per
case: requests/s, p50/p99 latency, failed transfers, the proxy's RSS after a warm-up and its peak
RSS (VmHWM) at the end (memory flat = the peak stays near the warmed RSS), and the ratios against
the floors: non-subject >= 0.9x the matching mitmdump figure, subject >= 0.8x intercepting
mitmdump. Default 100,000 requests of 1 KiB per case and 2,000 of 1 MiB; `--quick` runs 3,000 and
100. The machine is shared: run it when nothing else is busy, and compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

from web_upstream import TestCA  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SIZES = {"1k": 1024, "1m": 1024 * 1024}

# --------------------------------------------------------------------------- the fast origin


def _response(size: int) -> bytes:
    body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
        b"content-length: " + str(size).encode() + b"\r\n\r\n"
    )
    return head + body


RESPONSES = {f"/{name}".encode(): _response(size) for name, size in SIZES.items()}
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class _Origin(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, fixed answers; enough to keep ahead of any proxy."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1] if len(parts) == 3 else b""
            if path.startswith(b"http"):  # absolute form, should a proxy forward it as is
                path = b"/" + path.split(b"/", 3)[-1]
            self.transport.write(RESPONSES.get(path.split(b"?")[0], NOT_FOUND))


def serve_origin(cert: str, key: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        plain = await loop.create_server(_Origin, "127.0.0.1", 0, backlog=1024)
        secure = await loop.create_server(_Origin, "127.0.0.1", 0, ssl=context, backlog=1024)
        ports = {
            "http_port": plain.sockets[0].getsockname()[1],
            "https_port": secure.sockets[0].getsockname()[1],
        }
        print(json.dumps(ports), flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the proxy may run in a child of the command started)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += _tree(int(child))
    return pids


def _status_kib(pid: int, field_name: str) -> int:
    total = 0
    for one in _tree(pid):
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Proxy:
    """A running proxy: the URL clients use, the pid whose memory is measured, extra CA files
    the client must trust (an intercepting proxy's CA)."""

    url: str | None
    pid: int | None
    client_ca: list[Path] = field(default_factory=list)


ProxyFactory = Callable[[Path], AbstractContextManager[Proxy]]


@contextmanager
def no_proxy(work: Path) -> Iterator[Proxy]:
    yield Proxy(url=None, pid=None)


def _mitmdump(work: Path, extra: list[str], ca: Path) -> Iterator[Proxy]:
    port = _free_port()
    confdir = work / "mitm-conf"
    confdir.mkdir(exist_ok=True)
    argv = [
        str(VENV_BIN / "mitmdump"),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={ca}",
        *extra,
    ]
    log = open(work / "mitmdump.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "mitmdump")
        yield Proxy(
            url=f"http://127.0.0.1:{port}",
            pid=proc.pid,
            client_ca=[confdir / "mitmproxy-ca-cert.pem"],
        )
    finally:
        _stop(proc)
        log.close()


def mitmdump_ignore(ca: Path) -> ProxyFactory:
    return lambda work: contextmanager(_mitmdump)(work, ["--ignore-hosts", ".*"], ca)


def mitmdump_plain(ca: Path) -> ProxyFactory:
    return lambda work: contextmanager(_mitmdump)(work, [], ca)


def mitmdump_intercept_w(ca: Path) -> ProxyFactory:
    return lambda work: contextmanager(_mitmdump)(work, ["-w", str(work / "flows.mitm")], ca)


SQUID_CONF = """\
http_port 127.0.0.1:{port}
acl CONNECT method CONNECT
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {work}/squid-cache.log
pid_filename {work}/squid.pid
coredump_dir {work}
logfile_rotate 0
shutdown_lifetime 1 seconds
max_filedescriptors 4096
"""


@contextmanager
def squid(work: Path) -> Iterator[Proxy]:
    squid_bin = shutil.which("squid") or "/usr/sbin/squid"
    port = _free_port()
    conf = work / "squid.conf"
    conf.write_text(SQUID_CONF.format(port=port, work=work))
    os.chmod(work, 0o777)  # squid drops to its own user for the logs
    log = open(work / "squid.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [squid_bin, "-N", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_port(port, proc, "squid")
        yield Proxy(url=f"http://127.0.0.1:{port}", pid=proc.pid)
    finally:
        _stop(proc)
        log.close()


# --------------------------------------------------------------------------- lbm proxy

LBM_SUBJECT = "p4001"
LBM_OTHER = "p4002"
LBM_REF = "ca1-2026-4001"


def set_option(config: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (a TOML literal) in `[section]` of an lbm.toml, adding what is missing."""
    lines = config.read_text().split("\n")
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header]
    at = lines.index(header)
    end = next((j for j in range(at + 1, len(lines)) if lines[j].startswith("[")), len(lines))
    for j in range(at + 1, end):
        if lines[j].split("=")[0].strip() == key:
            lines[j] = f"{key} = {value}"
            break
    else:
        lines.insert(end, f"{key} = {value}")
    config.write_text("\n".join(lines))


def _lbm_ca(lbm_run: Callable[..., str]) -> Path:
    """The interception CA certificate `lbm proxy ca` names (first absolute path it prints)."""
    out = lbm_run("proxy", "ca")
    for word in out.split():
        if word.startswith("/") and Path(word).is_file():
            return Path(word)
    raise RuntimeError(f"lbm proxy ca printed no certificate path: {out[:200]!r}")


def lbm_proxy(ca: Path, subject: bool) -> ProxyFactory:
    """`lbm proxy run` in a fresh data dir (real clock); 127.0.0.1 is leased to a principal
    with a granted web authorisation (subject) or to one with none."""

    @contextmanager
    def start(work: Path) -> Iterator[Proxy]:
        from lbm_testing import Lbm, grant_argv

        from store import agefile as age

        data = work / "lbm-data"
        lbm = Lbm(data)

        def run(*argv: str) -> str:
            return lbm(*argv, check=True, timeout=120).stdout

        run("init")
        config = data / "lbm.toml"
        set_option(config, "web", "listen_host", '"127.0.0.1"')
        set_option(config, "web", "listen_port", "0")
        set_option(config, "web", "upstream_ca_file", json.dumps(str(ca)))
        principal = LBM_SUBJECT if subject else LBM_OTHER
        feed = work / "leases.csv"
        feed.write_text(
            "principal,kind,value,valid_from,valid_to\n"
            f"{principal},ip,127.0.0.1,2000-01-01T00:00:00Z,\n"
        )
        run("identity", "import", str(feed))
        if subject:
            _secret, public = age.generate()
            run("keys", "investigator", "add", "inv1", public, "--principal", "p900")
            run(*grant_argv(LBM_REF, principal, channel="web"))
        client_ca = _lbm_ca(run)
        port_file = data / "run" / "proxy.port"
        ready = data / "run" / "proxy.ready"
        log = open(work / "lbm-proxy.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(data), "proxy", "run"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (ready.exists() and port_file.exists()):
                if proc.poll() is not None:
                    raise RuntimeError(f"lbm proxy run exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("lbm proxy run did not become ready within 60 s")
                time.sleep(0.1)
            port = int(port_file.read_text().strip())
            yield Proxy(url=f"http://127.0.0.1:{port}", pid=proc.pid, client_ca=[client_ca])
        finally:
            _stop(proc)
            log.close()
        if proc.returncode != 0:
            raise RuntimeError(f"lbm proxy run exited with {proc.returncode} on SIGTERM")
        from store.metadata import read_stream
        from store.paths import DataPaths

        rows = read_stream(DataPaths(data), "web").to_pylist()
        decisions: dict[str, int] = {}
        for row in rows:
            key = f"{row['decision']}/{row['error_kind'] or 'ok'}/refs={len(row['refs'] or [])}"
            decisions[key] = decisions.get(key, 0) + 1
        print(f"    lbm wrote {len(rows)} web rows: {decisions}", flush=True)
        if subject and not any((data / "archive" / LBM_REF).rglob("*")):
            raise RuntimeError("the subject case archived nothing")

    return start


# --------------------------------------------------------------------------- the client


@dataclass
class Measure:
    requests: int
    failed: int
    seconds: float
    latencies: list[float]
    rss_warm_kib: int | None = None
    rss_peak_kib: int | None = None

    @property
    def rps(self) -> float:
        return (self.requests - self.failed) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def run_curl(
    work: Path,
    url: str,
    total: int,
    concurrency: int,
    proxy: Proxy,
    cacert: Path,
) -> Measure:
    bundle = work / "client-ca.pem"
    bundle.write_bytes(b"".join(p.read_bytes() for p in [cacert, *proxy.client_ca]))
    per = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    for i, count in enumerate(per):
        if count == 0:
            continue
        config = work / f"curl-{i}.cfg"
        with config.open("w") as out:
            for _ in range(count):
                out.write(f'url = "{url}"\noutput = "/dev/null"\n')
        argv = [
            "curl",
            "-s",
            "--cacert",
            str(bundle),
            "-w",
            "%{http_code} %{time_total}\\n",
            "-K",
            str(config),
        ]
        if proxy.url:
            argv[1:1] = ["-x", proxy.url]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.monotonic() - started
    latencies: list[float] = []
    failed = 0
    for output in outputs:
        for line in output.decode().splitlines():
            code, _, spent = line.partition(" ")
            if code != "200":
                failed += 1
            else:
                latencies.append(float(spent))
    failed += total - len(latencies) - failed  # transfers curl never reported
    return Measure(requests=total, failed=failed, seconds=seconds, latencies=latencies)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    scheme: str  # "https" | "http"
    factory: ProxyFactory
    baseline: str | None = None  # name of the case this one is compared with
    floor: float | None = None


def cases(ca: Path) -> list[Case]:
    return [
        Case("direct https", "https", no_proxy),
        Case("direct http", "http", no_proxy),
        Case("mitmdump ignore-all https", "https", mitmdump_ignore(ca)),
        Case(
            "lbm non-subject https (passed)",
            "https",
            lbm_proxy(ca, subject=False),
            "mitmdump ignore-all https",
            0.9,
        ),
        Case("mitmdump http", "http", mitmdump_plain(ca)),
        Case("lbm non-subject http", "http", lbm_proxy(ca, subject=False), "mitmdump http", 0.9),
        Case("mitmdump intercept -w https", "https", mitmdump_intercept_w(ca)),
        Case(
            "lbm subject https (archived)",
            "https",
            lbm_proxy(ca, subject=True),
            "mitmdump intercept -w https",
            0.8,
        ),
        Case("squid tunnel https", "https", squid),
        Case("squid http", "http", squid),
    ]


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 + 100 requests per case")
    parser.add_argument("--requests", type=int, default=None, help="1 KiB requests per case")
    parser.add_argument("--large-requests", type=int, default=None, help="1 MiB requests")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel curl clients")
    parser.add_argument("--only", nargs="*", default=None, help="case names containing these")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.serve:
        serve_origin(*args.serve)
        return 0
    small = args.requests or (3000 if args.quick else 100_000)
    large = args.large_requests or (100 if args.quick else 2000)
    counts = {"1k": small, "1m": large}

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    test_ca = TestCA(work / "ca")
    cert, key = test_ca.issue(["localhost", "127.0.0.1"], stem="origin")
    origin = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(cert), str(key)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert origin.stdout is not None
    ports = json.loads(origin.stdout.readline())
    print(
        f"origin: http {ports['http_port']}, https {ports['https_port']}; "
        f"{small} x 1 KiB, {large} x 1 MiB per case, {args.concurrency} curl clients; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[tuple[str, str], Measure] = {}
    skipped: dict[str, str] = {}
    try:
        for case in cases(test_ca.ca_file):
            if args.only and not any(part in case.name for part in args.only):
                continue
            case_dir = work / case.name.replace(" ", "_").replace("(", "").replace(")", "")
            case_dir.mkdir()
            port = ports["https_port"] if case.scheme == "https" else ports["http_port"]
            try:
                with case.factory(case_dir) as proxy:
                    for size in args.sizes:
                        url = f"{case.scheme}://localhost:{port}/{size}"
                        total = counts[size]
                        warm = max(args.concurrency, min(1000, total // 10))
                        run_curl(case_dir, url, warm, args.concurrency, proxy, test_ca.ca_file)
                        rss_warm = _status_kib(proxy.pid, "VmRSS") if proxy.pid else None
                        measure = run_curl(
                            case_dir, url, total, args.concurrency, proxy, test_ca.ca_file
                        )
                        measure.rss_warm_kib = rss_warm
                        measure.rss_peak_kib = (
                            _status_kib(proxy.pid, "VmHWM") if proxy.pid else None
                        )
                        results[(case.name, size)] = measure
                        print(
                            f"  {case.name:34} {size:3} {measure.rps:9.0f} req/s  "
                            f"p50 {measure.percentile(0.5) * 1000:7.2f} ms  "
                            f"p99 {measure.percentile(0.99) * 1000:7.2f} ms  "
                            f"failed {measure.failed:5}  RSS warm/peak "
                            f"{_mib(measure.rss_warm_kib)}/{_mib(measure.rss_peak_kib)} MiB",
                            flush=True,
                        )
            except Exception as exc:
                skipped[case.name] = f"{type(exc).__name__}: {exc}"
                print(f"  {case.name:34} skipped: {skipped[case.name]}", flush=True)
    finally:
        _stop(origin)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")

    print("\nratios against the floors (requests/s; p50 latency; peak RSS growth after warm-up):")
    for case in cases(test_ca.ca_file):
        if case.baseline is None or case.floor is None:
            continue
        for size in args.sizes:
            ours, base = results.get((case.name, size)), results.get((case.baseline, size))
            if ours is None or base is None:
                why = skipped.get(case.name) or skipped.get(case.baseline) or "not run"
                print(f"  {case.name:34} {size:3} vs {case.baseline}: n/a ({why})")
                continue
            ratio = ours.rps / base.rps if base.rps else float("nan")
            verdict = "ok" if ratio >= case.floor and ours.failed == 0 else "BELOW FLOOR"
            growth = (
                f"{(ours.rss_peak_kib - ours.rss_warm_kib) / 1024:+.0f} MiB"
                if ours.rss_peak_kib is not None and ours.rss_warm_kib is not None
                else "-"
            )
            print(
                f"  {case.name:34} {size:3} {ratio:5.2f}x {case.baseline} "
                f"(floor {case.floor}x: {verdict}); p50 "
                f"{ours.percentile(0.5) * 1000:.2f} vs {base.percentile(0.5) * 1000:.2f} ms; "
                f"peak RSS {_mib(ours.rss_peak_kib)} vs {_mib(base.rss_peak_kib)} MiB, "
                f"growth after warm-up {growth}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One loopback HTTP server for every daemon's counters: `GET /metrics`.

Each daemon writes its own `run/NAME.prom` (appliance.counters); the hardened units have no
network, so this server (started by `lbm run`, or as `lbm metrics serve` for an `lbm-metrics`
unit) reads them all at each scrape, adds a `daemon="NAME"` label to every sample, merges metric
families of the same name across daemons (Prometheus refuses a family described twice) and adds
`lbm_daemon_up{daemon}` from the status files (1 while the pid in `run/NAME.status.json` is alive
and running). A `.prom` file of a daemon no longer running is not served.

It listens on `[metrics] listen` (HOST:PORT, loopback only; port 0 picks a free port, written to
`run/metrics.port`, 0600) and logs no client address and no request.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appliance.cli import daemonlog
from appliance.cli.app import EXIT_USAGE, App, fail, pass_app
from appliance.counters import Counters, StatusWriter, check_label_value
from store.fsutil import atomic_write
from store.readiness import announce_ready

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT on loopback (`[::1]:9000` for IPv6); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"[metrics] listen {value!r}: must be HOST:PORT")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"[metrics] listen {value!r}: only a loopback address (127.0.0.1, ::1) is "
                "allowed; put a scraper or a reverse proxy on the box to reach it"
            )
    return host, int(port)


def daemon_label(name: str) -> str:
    """A daemon's file name as a label value (`capture-eth0.100` -> `capture_eth0_100`)."""
    return check_label_value(re.sub(r"[^a-z0-9_]", "_", name.lower())[:40] or "other")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def daemon_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every daemon's status file (name -> status), with `up` computed from its pid."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("*.status.json")):
        name = path.name[: -len(".status.json")]
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data["up"] = data.get("state") == "running" and _pid_alive(data.get("pid"))
        out[name] = data
    return out


class _Merged:
    """A collector holding the families merged from every `.prom` file."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(run_dir: Path) -> bytes:
    """The merged Prometheus text of every running daemon."""
    states = daemon_states(run_dir)
    up = GaugeMetricFamily("lbm_daemon_up", "1 while the daemon runs", labels=["daemon"])
    families: dict[str, Metric] = {}
    for name, state in states.items():
        label = daemon_label(name)
        up.add_metric([label], 1.0 if state["up"] else 0.0)
        prom = run_dir / f"{name}.prom"
        if not state["up"] or not prom.is_file():
            continue
        try:
            text = prom.read_text()
            parsed = list(text_string_to_metric_families(text))
        except (OSError, ValueError):
            continue  # a file being replaced: the next scrape reads it
        for fam in parsed:
            into = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
            for s in fam.samples:
                into.samples.append(
                    Sample(s.name, {**s.labels, "daemon": label}, s.value, s.timestamp)
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([up, *families.values()]))
    return generate_latest(registry)


class Scrapes:
    def __init__(self) -> None:
        self.served = 0
        self.not_found = 0


def make_server(
    run_dir: Path, host: str, port: int, scrapes: Scrapes | None = None
) -> ThreadingHTTPServer:
    tally = scrapes or Scrapes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                tally.not_found += 1
                self.send_error(404, "only /metrics is served")
                return
            tally.served += 1
            body = render(run_dir)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # no client address, no request line in any log

    family = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        family = V6
    server = family((host, port), Handler)
    server.daemon_threads = True
    return server


class MetricsService:
    """The server, its port file and its own status file, served from a background thread;
    `lbm run` runs one inside the supervisor, `lbm metrics serve` in the foreground."""

    def __init__(self, run_dir: Path, listen: str) -> None:
        self.run_dir = run_dir
        self.host, port = parse_listen(listen)
        self.scrapes = Scrapes()
        self.server = make_server(run_dir, self.host, port, self.scrapes)
        self.port = int(self.server.server_address[1])
        counters = Counters("metrics")
        counters.counter(
            "metrics_requests", "requests to the metrics server, by result",
            lambda: {"served": self.scrapes.served, "not_found": self.scrapes.not_found},
            label="result",
        )  # fmt: skip
        self.status = StatusWriter(run_dir, "metrics", counters)
        self.status.port = self.port
        self.port_file = run_dir / "metrics.port"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> MetricsService:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.port_file, f"{self.port}\n".encode(), mode=0o600)
        for target, name in (
            (self.server.serve_forever, "metrics"),
            (self._tick, "metrics-status"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _tick(self) -> None:
        self.status.tick()
        while not self._stop.wait(1.0):
            self.status.tick()  # status file, counters and the watchdog

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.status.close()
        self.port_file.unlink(missing_ok=True)


def serve_forever(run_dir: Path, listen: str) -> int:
    """Serve until SIGTERM/SIGINT (the lbm-metrics unit); returns the bound port."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload: files are read per scrape
    service = MetricsService(run_dir, listen).start()
    ready = announce_ready(run_dir, "metrics")
    daemonlog.log("metrics", "listening", host=service.host, port=service.port)
    try:
        stop.wait()
    finally:
        service.stop()
        ready.unlink(missing_ok=True)
        daemonlog.log("metrics", "stopped")
    return service.port


@click.group("metrics")
def metrics() -> None:
    """Prometheus counters of every daemon, on one loopback port."""


@metrics.command("serve")
@click.option("--listen", help="HOST:PORT (loopback); default [metrics] listen")
@pass_app
def serve_cmd(app: App, listen: str | None) -> None:
    """Serve run/*.prom at http://HOST:PORT/metrics until SIGTERM (the lbm-metrics unit)."""
    if listen is not None:  # a usage error is reported before anything is read
        try:
            parse_listen(listen)
        except ValueError as exc:
            fail(f"--listen: {exc}", EXIT_USAGE)
    app.require_initialised()
    value = listen if listen is not None else str(app.config["metrics.listen"])
    if not value:
        fail(f"{app.config_path}: [metrics] listen is empty: metrics are not served", EXIT_USAGE)
    try:
        parse_listen(value)
    except ValueError as exc:
        fail(f"{app.config_path}: {exc}", EXIT_USAGE)
    try:
        serve_forever(app.paths.run, value)
    except OSError as exc:
        fail(f"metrics: cannot listen on {value}: {exc.strerror or exc}", 1)

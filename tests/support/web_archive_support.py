"""End-to-end helpers for the web archive tests (web-content): a data dir set up for a subject and
a non-subject, the real `lbm proxy run` daemon, curl through it, and the archive read back with
the investigator's identity (streaming, so a 100 MB body is hashed, never held).

Who is who: explicit proxy without authentication, principal by client IP. The subject's
clients bind 127.0.0.2, the non-subject's 127.0.0.3 (all of 127/8 is local on Linux).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbm_testing import REPO, Lbm
from web_upstream import Upstream

from store import agefile as age
from store.framing import iter_events
from store.keys import KeyStore
from store.metadata.reader import read_stream
from store.paths import DataPaths
from store.segment import PlainStream

REF = "ca1-2026-web-1"
SUBJECT, OTHER = "p12345", "p67890"
SUBJECT_IP, OTHER_IP = "127.0.0.2", "127.0.0.3"


def _set(text: str, section: str, key: str, value: str) -> str:
    """Replace `key = ...` inside `[section]` of the generated lbm.toml."""
    lines = text.splitlines()
    current = None
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[] ")
        elif current == section and line.split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    raise AssertionError(f"lbm.toml has no [{section}] {key}")


def setup_subject(lbm: Lbm, tmp: Path, upstream: Upstream, ref: str = REF) -> str:
    """Config (upstream CA, test host map), leases for both users, investigator inv1, a web
    grant for the subject. Returns the investigator's identity text."""
    config = lbm.data_dir / "lbm.toml"
    text = config.read_text()
    text = _set(text, "web", "upstream_ca_file", json.dumps(str(upstream.ca_file)))
    text = _set(text, "testing", "hosts", json.dumps(upstream.hosts_option()))
    config.write_text(text)
    feed = tmp / "leases.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        f"{SUBJECT},ip,{SUBJECT_IP},2000-01-01T00:00:00Z,\n"
        f"{OTHER},ip,{OTHER_IP},2000-01-01T00:00:00Z,\n"
    )
    lbm("identity", "import", str(feed), check=True)
    secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True)
    lbm.grant(ref, SUBJECT)
    return age.identity_file_text(secret)


@dataclass
class ProxyDaemon:
    """`lbm proxy run` in a subprocess (stdout/stderr to files in `logs`)."""

    lbm: Lbm
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, timeout: float = 30) -> ProxyDaemon:
        run = self.lbm.data_dir / "run"
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / "proxy.out").open("wb")
        err = (self.logs / "proxy.err").open("wb")
        cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(self.lbm.data_dir),
               "proxy", "run"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=self.lbm.env)
        out.close()
        err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (run / "proxy.ready").exists() and (run / "proxy.port").exists():
                self.port = int((run / "proxy.port").read_text())
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"lbm proxy run did not start:\n{self.output()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def vmhwm_mib(self) -> float:
        """Peak resident set size of the daemon so far (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("lbm proxy run did not stop on SIGTERM") from None
        return proc.returncode

    def output(self) -> str:
        return "".join(
            (self.logs / n).read_text(errors="replace")
            for n in ("proxy.out", "proxy.err")
            if (self.logs / n).exists()
        )

    def __enter__(self) -> ProxyDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_bundle(data_dir: Path, upstream: Upstream, out: Path) -> Path:
    """Every certificate under keys/ (the interception CA) plus the upstream's CA: what a
    force desktop trusts (our CA) and what the test upstream needs (its own CA)."""
    pems = [
        p.read_bytes()
        for p in sorted((data_dir / "keys").rglob("*.pem"))
        if b"BEGIN CERTIFICATE" in p.read_bytes() and b"PRIVATE KEY" not in p.read_bytes()
    ]
    assert pems, "no interception CA certificate under keys/"
    out.write_bytes(b"\n".join([*pems, upstream.ca_file.read_bytes()]))
    return out


def curl(proxy: ProxyDaemon, bundle: Path, source_ip: str, *args: str,
         timeout: float = 120) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    cmd = ["curl", "-sS", "--proxy", f"http://127.0.0.1:{proxy.port}", "--interface", source_ip,
           "--cacert", str(bundle), "--max-time", str(int(timeout)), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


@dataclass
class Item:
    header: dict[str, Any]
    length: int
    sha256: str
    head: bytes  # the first 64 KiB of the content
    trailer: dict[str, Any] | None


def archive_items(data_dir: Path, ref: str, identity: str, keep: int = 65536) -> list[Item]:
    """Every record of `ref` (sealed segments: stop the daemon first), in record-id order,
    hashed as it streams."""
    paths = DataPaths(data_dir)
    ks = KeyStore(paths)
    auth = ks.unwrap_authorisation(ref, identity)
    items: list[Item] = []
    segs = sorted((paths.archive / ref).glob("[0-9]*.age"), key=lambda p: int(p.name[:-4]))
    for seg in segs:
        key = ks.unwrap_segment(ref, int(seg.name[:-4]), auth)
        with seg.open("rb") as fh:
            header: dict[str, Any] = {}
            digest = hashlib.sha256()
            length = 0
            head = bytearray()
            for event, value in iter_events(PlainStream(age.AgeReader(fh, [key]).chunks())):
                if event == "header":
                    header, digest, length, head = value, hashlib.sha256(), 0, bytearray()
                elif event == "data":
                    digest.update(value)
                    length += len(value)
                    if len(head) < keep:
                        head += value[: keep - len(head)]
                else:
                    items.append(Item(header, length, digest.hexdigest(), bytes(head), value))
    return sorted(items, key=lambda i: record_order(i.header["id"]))


def record_order(record_id: str) -> tuple[int, int]:
    """Sort key of a record id `REF/SEGMENT/N`: segment, then N."""
    _, seg, n = record_id.split("/")
    return int(seg), int(n)


def body_sha256(data_dir: Path, ref: str, identity: str, ids: set[str]) -> tuple[str, int]:
    """SHA-256 and length of the concatenation of the records `ids`, in record-id order,
    streamed (a 100 MB body is never held)."""
    paths = DataPaths(data_dir)
    ks = KeyStore(paths)
    auth = ks.unwrap_authorisation(ref, identity)
    digest = hashlib.sha256()
    total = 0
    segs = sorted((paths.archive / ref).glob("[0-9]*.age"), key=lambda p: int(p.name[:-4]))
    for seg in segs:
        key = ks.unwrap_segment(ref, int(seg.name[:-4]), auth)
        with seg.open("rb") as fh:
            take = False
            for event, value in iter_events(PlainStream(age.AgeReader(fh, [key]).chunks())):
                if event == "header":
                    take = value["id"] in ids
                elif event == "data" and take:
                    digest.update(value)
                    total += len(value)
    return digest.hexdigest(), total


def web_rows(data_dir: Path) -> list[dict[str, Any]]:
    return read_stream(DataPaths(data_dir), "web").to_pylist()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


__all__ = [
    "OTHER", "OTHER_IP", "REF", "SUBJECT", "SUBJECT_IP", "Item", "ProxyDaemon", "archive_items",
    "body_sha256", "client_bundle", "curl", "files_containing", "record_order", "setup_subject",
    "wait_for", "web_rows",
]  # fmt: skip

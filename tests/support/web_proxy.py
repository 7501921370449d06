"""Helpers for the web tests of `lbm proxy run` (fixtures in tests/web/conftest.py).

`start_proxy()` (tests/web/conftest.py) returns a `ProxyDaemon` once ready:
`.port`, `.proxy` (the URL for curl `--proxy` / httpx `proxy=`), `.stop()` (SIGTERM,
returns exit code and output), `.rows()` (the `web` rows, after stop), `.set_clock(ISO)` (moves
the running daemon's fake clock through `run/fake-now`). Every daemon is stopped at teardown.
The data dir trusts the upstream's test CA (`[web] upstream_ca_file`) and maps the upstream's
names to 127.0.0.1 (`[testing] hosts`). Principals come from IP leases (`lease()`): the subject
on 127.0.0.1 and the non-subject on 127.0.0.2 (curl `--interface`, httpx `local_address`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lbm_testing import Lbm

from store import agefile as age
from store.keys import KeyStore
from store.metadata import read_stream
from store.paths import DataPaths
from store.segment import PlainStream, read_records

SUBJECT, OTHER = "p12345", "p67890"
SUBJECT_IP, OTHER_IP = "127.0.0.1", "127.0.0.2"
REF = "op-web-1"


def set_option(data_dir: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (TOML text) in `[section]` of the data dir's lbm.toml."""
    config = data_dir / "lbm.toml"
    lines = config.read_text().split("\n")
    at = lines.index(f"[{section}]")
    for j in range(at + 1, len(lines)):
        if lines[j].startswith("["):
            break
        if lines[j].startswith(f"{key} = "):
            lines[j] = f"{key} = {value}"
            config.write_text("\n".join(lines))
            return
    lines.insert(at + 1, f"{key} = {value}")
    config.write_text("\n".join(lines))


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease(lbm: Lbm, tmp_path: Path, *pairs: tuple[str, str]) -> None:
    """IP leases (principal, ip) valid from a day ago, imported now."""
    now = datetime.now(UTC)
    feed = tmp_path / "leases.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        + "".join(f"{p},ip,{ip},{iso(now - timedelta(days=1))},\n" for p, ip in pairs)
    )
    lbm("identity", "import", str(feed), check=True)


def investigator(lbm: Lbm) -> str:
    """Register investigator inv1 (once) and return its age identity text."""
    secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True)
    return age.identity_file_text(secret)


def records(data_dir: Path, identity: str, ref: str = REF) -> list[Any]:
    """The archive's records for `ref`, decrypted with the investigator's identity."""
    paths = DataPaths(data_dir)
    if not (paths.archive / ref).is_dir():
        return []
    ks = KeyStore(paths)
    auth_key = ks.unwrap_authorisation(ref, identity)
    out: list[Any] = []
    for seg in sorted((paths.archive / ref).glob("[0-9]*.age")):
        seg_key = ks.unwrap_segment(ref, int(seg.name.split(".")[0]), auth_key)
        with seg.open("rb") as fh:
            out += read_records(PlainStream(age.AgeReader(fh, [seg_key]).chunks()))
    return out


@dataclass
class ProxyDaemon:
    data_dir: Path
    proc: subprocess.Popen[str]
    port: int
    output: tuple[str, str] | None = field(default=None)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_clock(self, when: datetime | str) -> None:
        text = when if isinstance(when, str) else iso(when)
        tmp = self.data_dir / "run" / "fake-now.tmp"
        tmp.write_text(text + "\n")
        tmp.replace(self.data_dir / "run" / "fake-now")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self.output = (out, err)
        return self.proc.returncode, self.output[0], self.output[1]

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = read_stream(DataPaths(self.data_dir), "web").to_pylist()
        return sorted(rows, key=lambda r: r["ts"])


def curl(
    daemon: ProxyDaemon,
    url: str,
    *args: str,
    source_ip: str = OTHER_IP,
    cacert: Path | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    """Real curl through the proxy from `source_ip`; `-w` prints status and cert details."""
    cmd = ["curl", "-sS", "--proxy", daemon.proxy, "--interface", source_ip,
           "--max-time", str(int(timeout)), *args]  # fmt: skip
    if cacert is not None:
        cmd += ["--cacert", str(cacert)]
    cmd.append(url)
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env=dict(os.environ))


def proxy_ca(data_dir: Path) -> Path:
    """The interception CA certificate clients are given (mitmproxy confdir layout in keys/)."""
    found = sorted((data_dir / "keys").rglob("mitmproxy-ca-cert.pem"))
    assert found, "no interception CA under keys/"
    return found[0]


def tunnel_cert_sha256(
    daemon: ProxyDaemon,
    host: str,
    port: int,
    cafile: Path,
    source_ip: str = OTHER_IP,
    *,
    sni: str | None = None,
) -> str:
    """CONNECT to `host` through the proxy from `source_ip`, handshake naming `sni` (default:
    `host`) and trusting `cafile`, and return the SHA-256 (hex) of the certificate shown."""
    import hashlib
    import socket
    import ssl

    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10,
                                    source_address=(source_ip, 0))  # fmt: skip
    try:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"proxy closed the CONNECT: {head!r}"
            head += chunk
        assert head.split(b" ", 2)[1] == b"200", head
        ctx = ssl.create_default_context(cafile=str(cafile))
        with ctx.wrap_socket(sock, server_hostname=sni or host) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()
    finally:
        sock.close()

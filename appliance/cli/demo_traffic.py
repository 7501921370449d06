"""The pretend internet and the pretend users of `lbm demo`, all on loopback.

`DemoCA` is a throwaway certificate authority (written into the demo directory) for the local
HTTPS server's certificate, which the appliance is told to trust (`[web] upstream_ca_file`).
`WebServer` answers `GET` over HTTPS on 127.0.0.1, port picked by the kernel; `MailSink` is an
aiosmtpd server that writes every message it accepts into a directory. Both run on daemon threads
of the demo process, so nothing of theirs outlives it. `fetch` and `send_mail` are the users: a
request through the proxy (CONNECT) and a message through the relay, from a given loopback
source address, which the identity map resolves to a principal.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import http.server
import json
import os
import smtplib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


class DemoCA:
    """A CA for the demo's web server: `ca_file`, `issue(host) -> (cert, key)` paths."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name("lbm demo internet CA"))
            .issuer_name(_name("lbm demo internet CA"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "demo-internet-ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, host: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{host}.pem", self.directory / f"{host}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"demo page {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebServer:
    """HTTPS on 127.0.0.1 (kernel-chosen `port`), on a daemon thread; `close()` stops it."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _SinkHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.count += 1
            stem = self.directory / f"{self.count:04d}"
        meta = {"from": envelope.mail_from, "to": envelope.rcpt_tos}
        stem.with_suffix(".json").write_text(json.dumps(meta) + "\n")
        content = envelope.original_content or b""
        stem.with_suffix(".eml").write_bytes(content)
        return "250 2.0.0 stored"


class MailSink:
    """An SMTP server on 127.0.0.1 (kernel-chosen `port`) storing mail in `directory`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.directory = directory
        self._handler = _SinkHandler(directory)
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: SMTP(self._handler), "127.0.0.1", 0)
        )
        self.port: int = self._server.sockets[0].getsockname()[1]
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def messages(self) -> int:
        return len(list(self.directory.glob("*.eml")))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass(frozen=True)
class Fetched:
    status: int
    body: str
    issuer: str  # who vouched for the certificate the user's browser was shown
    cert_sha256: str


def fetch(proxy_port: int, source_ip: str, host: str, port: int, path: str,
          trust: list[Path]) -> Fetched:  # fmt: skip
    """GET https://HOST:PORT/PATH through the proxy on 127.0.0.1:PROXY_PORT, from SOURCE_IP,
    trusting the CA files in `trust` (as a desktop given the interception CA would)."""
    ctx = ssl.create_default_context()
    for ca in trust:
        ctx.load_verify_locations(cafile=str(ca))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", proxy_port, timeout=20, source_address=(source_ip, 0), context=ctx
    )
    try:
        conn.set_tunnel(host, port)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True) or b""
        issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
        return Fetched(response.status, body, issuer, hashlib.sha256(der).hexdigest())
    finally:
        conn.close()


def send_mail(relay_port: int, source_ip: str, sender: str, rcpt: str, subject: str,
              text: str) -> None:  # fmt: skip
    """One message through the relay on 127.0.0.1:RELAY_PORT from SOURCE_IP (raises if refused)."""
    message = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{hashlib.sha256(text.encode()).hexdigest()[:16]}@force.example>\r\n"
        f"\r\n{text}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", relay_port, source_address=(source_ip, 0), timeout=20) as s:
        s.sendmail(sender, [rcpt], message)

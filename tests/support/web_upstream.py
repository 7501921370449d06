"""Upstream servers and a test CA for the web tests (real TLS, real hypercorn, on loopback).

`TestCA(directory)` is a throwaway certificate authority (cryptography, EC P-256): `.ca_file`
is its PEM certificate, `.issue(names)` writes a leaf certificate and key for DNS names and IP
addresses (SANs) and returns their paths, `.fingerprint(cert_path)` is the SHA-256 of the
certificate's DER, lowercase hex without colons.

`Upstream(directory)` (a context manager) runs hypercorn in a subprocess on 127.0.0.1 with a
plain HTTP port and a TLS port (ALPN h2 and http/1.1), one leaf certificate for `NAMES`
(`www.example.test`, `other.example.test`, `dnd.nhs.uk`, which matches the default
do-not-decrypt pattern `*.nhs.uk`, `localhost` and 127.0.0.1). The names do not resolve here:
point the proxy's `[testing] hosts` at 127.0.0.1 (`Upstream.hosts_option()`), or give curl
`--resolve`/`--connect-to` (`Upstream.curl_resolve()`).

Endpoints (the same on both ports):
- `GET /bytes/N?seed=S`: N deterministic pseudo-random bytes (`deterministic_bytes(N, S)`),
  streamed, with `content-length` and `x-sha256` (their digest, `sha256_of(N, S)`).
- `POST|PUT /upload`: reads the body as it streams, answers JSON `{"length", "sha256"}`.
- `GET|POST|... /echo...`: answers JSON with the request as the server saw it: `method`,
  `path` (raw path and query), `http_version`, `scheme`, `headers` (list of [name, value]),
  `body` (UTF-8, invalid bytes replaced), `body_sha256`, `length`. For canaries.
- `/ws` (any path starting with /ws): WebSocket echo, text and binary.
- `GET /slow?chunks=K&interval=T&size=B`: K chunks of B bytes, T seconds apart (defaults 10,
  0.1 s, 1024): a request that stays in flight.
- `GET /status/C`: an empty answer with status C.

Run as a script (`python web_upstream.py --cert C --key K`) it binds both ports, prints one JSON
line `{"http_port": .., "https_port": ..}` on stdout and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import hashlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

NAMES: tuple[str, ...] = (
    "www.example.test",
    "other.example.test",
    "dnd.nhs.uk",
    "localhost",
)
"""The names the upstream's leaf certificate covers (plus the IP address 127.0.0.1)."""

DO_NOT_DECRYPT_NAME = "dnd.nhs.uk"
"""A name the default do-not-decrypt list (`*.nhs.uk`) matches."""

BLOCK = 64 * 1024
"""The period of `deterministic_bytes`: each 64 KiB chunk is one block of the seed's stream,
with the chunk's index in its first 8 bytes (so a repeated, dropped or reordered chunk changes
the digest)."""


# --------------------------------------------------------------------------- deterministic data


@functools.lru_cache(maxsize=32)
def _block(seed: str) -> bytes:
    return hashlib.shake_256(b"lbm-upstream:" + seed.encode()).digest(BLOCK)


def deterministic_bytes(n: int, seed: str | int = "0") -> Iterator[bytes]:
    """Yield `n` pseudo-random bytes determined by `seed`, in chunks of at most 64 KiB."""
    if n < 0:
        raise ValueError(f"deterministic_bytes: n must be >= 0, got {n}")
    block = _block(str(seed))
    tail = block[8:]
    index = 0
    remaining = n
    while remaining > 0:
        chunk = index.to_bytes(8, "big") + tail
        if remaining < BLOCK:
            chunk = chunk[:remaining]
        remaining -= len(chunk)
        index += 1
        yield chunk


@functools.lru_cache(maxsize=64)
def sha256_of(n: int, seed: str | int = "0") -> str:
    """The SHA-256 (lowercase hex) of `deterministic_bytes(n, seed)`."""
    digest = hashlib.sha256()
    for chunk in deterministic_bytes(n, seed):
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- test CA


class TestCA:
    """A certificate authority for tests, kept in `directory` (`ca.pem`, `ca.key`)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path | str, name: str = "LBM Test Upstream CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._name = subject
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        key_file = self.directory / "ca.key"
        key_file.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        self._issued = 0

    def issue(self, names: Sequence[str], stem: str | None = None) -> tuple[Path, Path]:
        """Write a leaf certificate (SANs: DNS names, and IP addresses for names that parse as
        one) and its key; return (cert_path, key_path). The first DNS name is the CN."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if not names:
            raise ValueError("TestCA.issue: at least one name is needed")
        sans: list[x509.GeneralName] = []
        for entry in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                sans.append(x509.DNSName(entry))
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self._issued += 1
        stem = stem or f"leaf{self._issued}"
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    @staticmethod
    def fingerprint(cert_path: Path | str) -> str:
        """SHA-256 of the (first) certificate's DER in a PEM file, lowercase hex, no colons."""
        return pem_fingerprint(Path(cert_path).read_bytes())


def pem_fingerprint(pem: bytes) -> str:
    """SHA-256 of the first certificate in `pem` (DER), lowercase hex without colons."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate (e.g. `ssl.SSLSocket.getpeercert(binary_form=True)`)."""
    return hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------- the upstream


class Upstream:
    """hypercorn on 127.0.0.1 in a subprocess: `http_port` (plain) and `https_port` (TLS, ALPN h2
    and http/1.1), serving the endpoints of this module's docstring.

    `ca` is reused when given (so several upstreams share one trust anchor), else a new TestCA
    is made in `directory/ca`."""

    def __init__(
        self,
        directory: Path | str,
        names: Sequence[str] = NAMES,
        ca: TestCA | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or TestCA(self.directory / "ca")
        self.names = tuple(names)
        self.cert_file, self.key_file = self.ca.issue([*self.names, "127.0.0.1"], stem="upstream")
        self.ca_file: Path = self.ca.ca_file
        self.leaf_sha256: str = self.ca.fingerprint(self.cert_file)
        self.host = "127.0.0.1"
        self.http_port = 0
        self.https_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def start(self) -> Upstream:
        log = open(self.directory / "upstream.log", "wb")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--cert",
                str(self.cert_file),
                "--key",
                str(self.key_file),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=10)
            err = (self.directory / "upstream.log").read_text(errors="replace")
            raise RuntimeError(
                f"upstream server did not start (exit {self._proc.returncode}): {err}"
            )
        ports = json.loads(line)
        self.http_port = int(ports["http_port"])
        self.https_port = int(ports["https_port"])
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses

    def url(self, path: str = "/", host: str = "www.example.test", tls: bool = True) -> str:
        """A URL for `path` on `host` (a name the proxy maps to 127.0.0.1) at the right port."""
        if not path.startswith("/"):
            path = "/" + path
        scheme, port = ("https", self.https_port) if tls else ("http", self.http_port)
        return f"{scheme}://{host}:{port}{path}"

    def ws_url(self, path: str = "/ws", host: str = "www.example.test", tls: bool = True) -> str:
        scheme, port = ("wss", self.https_port) if tls else ("ws", self.http_port)
        return f"{scheme}://{host}:{port}{path}"

    def hosts_option(self) -> list[str]:
        """`[testing] hosts` entries mapping every upstream name to 127.0.0.1."""
        return [f"{name}=127.0.0.1" for name in self.names if name != "localhost"]

    def curl_resolve(self) -> list[str]:
        """curl arguments resolving every name to 127.0.0.1 on both ports (direct requests)."""
        args: list[str] = []
        for name in self.names:
            for port in (self.http_port, self.https_port):
                args += ["--resolve", f"{name}:{port}:127.0.0.1"]
        return args


# --------------------------------------------------------------------------- the ASGI app

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {k: v[-1] for k, v in parsed.items()}


async def _simple(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> Iterator[bytes]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return iter(chunks)


async def _bytes(scope: Scope, send: Send, n_text: str) -> None:
    try:
        n = int(n_text)
        if n < 0:
            raise ValueError
    except ValueError:
        await _simple(send, 400, b"bad length\n")
        return
    seed = _query(scope).get("seed", "0")
    digest = await asyncio.get_running_loop().run_in_executor(None, sha256_of, n, seed)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(n).encode()),
                (b"x-sha256", digest.encode()),
            ],
        }
    )
    for chunk in deterministic_bytes(n, seed):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _upload(receive: Receive, send: Send) -> None:
    digest = hashlib.sha256()
    length = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        digest.update(body)
        length += len(body)
        if not message.get("more_body", False):
            break
    answer = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode()
    await _simple(send, 200, answer, b"application/json")


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"".join(await _read_body(receive))
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        path += b"?" + scope["query_string"]
    answer = {
        "method": scope["method"],
        "path": path.decode("latin-1"),
        "http_version": scope.get("http_version"),
        "scheme": scope.get("scheme"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": body.decode("utf-8", errors="replace"),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
    }
    await _simple(send, 200, json.dumps(answer).encode(), b"application/json")


async def _slow(scope: Scope, send: Send) -> None:
    query = _query(scope)
    try:
        chunks = int(query.get("chunks", "10"))
        interval = float(query.get("interval", "0.1"))
        size = int(query.get("size", "1024"))
    except ValueError:
        await _simple(send, 400, b"bad parameters\n")
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(chunks * size).encode()),
            ],
        }
    )
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b"s" * size, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _websocket(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message.get("text") or ""})
        elif kind == "websocket.disconnect":
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The upstream's ASGI application."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path: str = scope["path"]
    if scope["type"] == "websocket":
        await _websocket(receive, send)
        return
    if path.startswith("/bytes/"):
        await _bytes(scope, send, path[len("/bytes/") :])
    elif path == "/upload":
        await _upload(receive, send)
    elif path.startswith("/echo"):
        await _echo(scope, receive, send)
    elif path == "/slow":
        await _slow(scope, send)
    elif path.startswith("/status/"):
        try:
            status = int(path[len("/status/") :])
        except ValueError:
            status = 400
        await _simple(send, status if 200 <= status < 600 else 400, b"")
    else:
        await _simple(send, 404, b"not found\n")


# --------------------------------------------------------------------------- the server process


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


def serve(cert: str, key: str) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    plain = _listening_socket()
    secure = _listening_socket()
    config = Config()
    config.certfile = cert
    config.keyfile = key
    config.bind = [f"fd://{secure.fileno()}"]
    config.insecure_bind = [f"fd://{plain.fileno()}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_timeout = 60
    config.h11_max_incomplete_size = 64 * 1024
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.graceful_timeout = 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            json.dumps(
                {"http_port": plain.getsockname()[1], "https_port": secure.getsockname()[1]}
            ),
            flush=True,
        )
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(main())


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="web test upstream (hypercorn)")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    serve(args.cert, args.key)
    return 0


if __name__ == "__main__":
    sys.exit(_main())

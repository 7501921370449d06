"""The SMTP service certificate (STARTTLS) and the server's TLS context.

`[smtp] tls_cert` / `tls_key` name a PEM certificate chain and key (relative paths are taken from
the data directory). Left empty, they default to `keys/smtp.crt` and `keys/smtp.key`, which
`ensure_smtp_cert` (run by `lbm init` and at relay start) creates self-signed when absent: an
ECDSA P-256 key and a certificate (both 0600, as everything in the data directory) for the
gateway id, `localhost` and the loopback addresses. A configured path that does not exist is
an error, never replaced.
"""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from store.fsutil import atomic_write, ensure_dir

DEFAULT_CERT = "smtp.crt"
DEFAULT_KEY = "smtp.key"
VALIDITY = timedelta(days=825)


class TlsError(Exception):
    """The SMTP certificate or key cannot be made or loaded (one line, names the file)."""


class ConfigLike(Protocol):
    def __getitem__(self, name: str) -> Any: ...


def cert_paths(keys_dir: Path, cfg: ConfigLike) -> tuple[Path, Path, bool]:
    """(certificate, key, configured): the files `[smtp] tls_cert`/`tls_key` name, or the
    defaults in `keys_dir` (configured False)."""
    root = keys_dir.parent
    cert_opt, key_opt = str(cfg["smtp.tls_cert"]), str(cfg["smtp.tls_key"])
    if bool(cert_opt) != bool(key_opt):
        raise TlsError("[smtp] tls_cert and tls_key must be set together (or both left empty)")
    if cert_opt:
        cert, key = Path(cert_opt), Path(key_opt)
        return (
            (cert if cert.is_absolute() else root / cert),
            (key if key.is_absolute() else root / key),
            True,
        )
    return keys_dir / DEFAULT_CERT, keys_dir / DEFAULT_KEY, False


def _self_signed(name: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    alt = [
        x509.DNSName(name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_smtp_cert(keys_dir: Path, cfg: ConfigLike) -> tuple[Path, Path, bool]:
    """(certificate, key, created): make the default self-signed pair when it is absent."""
    cert, key, configured = cert_paths(keys_dir, cfg)
    if configured:
        for path, what in ((cert, "tls_cert"), (key, "tls_key")):
            if not path.is_file():
                raise TlsError(f"[smtp] {what} {path}: no such file")
        return cert, key, False
    if cert.exists() and key.exists():
        return cert, key, False
    ensure_dir(keys_dir)
    cert_pem, key_pem = _self_signed(str(cfg["gateway.id"]))
    atomic_write(key, key_pem, mode=0o600)
    atomic_write(cert, cert_pem, mode=0o600)  # everything in the data dir is private
    return cert, key, True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The STARTTLS server context: TLS 1.2 or later, no client certificates asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{cert} / {key}: cannot load the SMTP certificate ({exc})") from None
    return ctx

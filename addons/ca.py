"""The interception CA: the certificate authority the proxy signs subjects' server certificates
with (and the notice host's), deployed to force desktops as a trusted root.

It lives in `keys/interception-ca/`, in the layout mitmproxy's `CertStore.from_store` reads from
its `confdir` (`mitmproxy-ca.pem` = private key + certificate, `mitmproxy-ca-cert.pem`,
`mitmproxy-dhparam.pem`), so the daemon hands that directory to mitmproxy as `confdir` and
mitmproxy never generates a CA of its own. Every file is 0600 and written atomically; the
directory is 0700. `ensure_ca` is idempotent: an existing CA is checked (key matches
certificate, it is a CA) and kept, never silently replaced: a broken one is an error naming the
file, because replacing it would break every desktop that trusts the old one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mitmproxy import certs

from store.fsutil import atomic_write, ensure_dir

CA_DIRNAME = "interception-ca"
BASENAME = "mitmproxy"  # the file names mitmproxy's CertStore.from_store expects
KEY_FILE = f"{BASENAME}-ca.pem"
CERT_FILE = f"{BASENAME}-ca-cert.pem"
DHPARAM_FILE = f"{BASENAME}-dhparam.pem"
ORGANIZATION = "lbm-gateway"
COMMON_NAME = "lbm-gateway interception CA"
KEY_SIZE = 2048  # as mitmproxy; generated at every `lbm init`, which tests run often


class CaError(Exception):
    """The interception CA is unreadable or inconsistent."""


def ca_dir(keys_dir: Path) -> Path:
    return Path(keys_dir) / CA_DIRNAME


def ensure_ca(keys_dir: Path, *, common_name: str = COMMON_NAME) -> Path:
    """Create the interception CA under `keys_dir` if absent; return its directory (the
    mitmproxy confdir). An existing CA is validated and kept."""
    directory = ensure_dir(ca_dir(keys_dir))
    key_path = directory / KEY_FILE
    if key_path.exists():
        _load(key_path)  # raises CaError if broken: never replaced silently
        cert_pem = _cert_pem(key_path.read_bytes())
        if not (directory / CERT_FILE).exists():
            atomic_write(directory / CERT_FILE, cert_pem)
    else:
        key, cert = certs.create_ca(organization=ORGANIZATION, cn=common_name, key_size=KEY_SIZE)
        key_pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.TraditionalOpenSSL,
            encryption_algorithm=serialization.NoEncryption(),
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        atomic_write(directory / CERT_FILE, cert_pem)
        atomic_write(key_path, key_pem + cert_pem)  # last: its presence means "CA complete"
    if not (directory / DHPARAM_FILE).exists():
        atomic_write(directory / DHPARAM_FILE, certs.DEFAULT_DHPARAM)
    return directory


def _cert_pem(raw: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(raw)
    return cert.public_bytes(serialization.Encoding.PEM)


def _load(key_path: Path) -> x509.Certificate:
    try:
        raw = key_path.read_bytes()
    except OSError as exc:
        raise CaError(f"{key_path}: cannot read the interception CA: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
        cert = x509.load_pem_x509_certificate(raw)
    except (ValueError, TypeError) as exc:
        raise CaError(f"{key_path}: not a PEM private key and certificate: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
        raise CaError(f"{key_path}: the private key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaError(f"{key_path}: the certificate is not a CA (basicConstraints CA:TRUE)")
    return cert


def ca_info(keys_dir: Path) -> tuple[Path, str, str]:
    """(certificate path, SHA-256 fingerprint of its DER as lower-case hex, PEM text)."""
    directory = ca_dir(keys_dir)
    key_path = directory / KEY_FILE
    if not key_path.exists():
        raise CaError(f"{key_path}: no interception CA (run `lbm init`)")
    cert = _load(key_path)
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return directory / CERT_FILE, hashlib.sha256(der).hexdigest(), pem

"""The notice host and the interception CA, through `lbm proxy run` and real curl.

The proxy answers `[notice] host` itself over HTTP and HTTPS (certificate from the interception
CA, verified by curl with `lbm proxy ca`'s PEM), with the notice text HTML-escaped and its
version; no upstream exists for that name (nothing resolves it here, so any attempt would fail),
and a subject's notice requests are never archived. The CA: `lbm init` creates it (key 0600),
`lbm proxy ca` prints its path, fingerprint and PEM (checked against openssl), it is kept across
restarts and never silently replaced when broken.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from lbm_testing import Lbm
from web_proxy import (
    OTHER,
    OTHER_IP,
    REF,
    SUBJECT,
    SUBJECT_IP,
    ProxyDaemon,
    curl,
    investigator,
    lease,
    records,
    set_option,
    tunnel_cert_sha256,
)
from web_upstream import Upstream

from addons.ca import CaError, ca_info, ensure_ca
from addons.notice import Notice, normalise_host

Start = Callable[..., ProxyDaemon]
NOTICE = "notice.lbm.invalid"
TEXT = 'Monitored <script>alert("x")</script> & logged'


def _ca(lbm: Lbm) -> dict[str, str]:
    return json.loads(lbm("proxy", "ca", "--json", check=True).stdout)


def test_notice_page_http_and_https_never_upstream_never_archived(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    set_option(web_lbm.data_dir, "notice", "text", json.dumps(TEXT))
    set_option(web_lbm.data_dir, "notice", "version", json.dumps("2026-07b"))
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    identity = investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    ca = _ca(web_lbm)
    daemon = start_proxy()
    for source_ip in (OTHER_IP, SUBJECT_IP):
        for scheme in ("http", "https"):
            r = curl(daemon, f"{scheme}://{NOTICE}/any/path?x=1", "-i",
                     source_ip=source_ip, cacert=Path(ca["certificate"]))  # fmt: skip
            assert r.returncode == 0, r.stderr
            text = r.stdout.decode()
            if text.startswith("HTTP/1.1 200 Connection established"):
                text = text.partition("\r\n\r\n")[2]  # curl -i shows the CONNECT answer too
            head, _, body = text.partition("\r\n\r\n")
            assert head.startswith(("HTTP/1.1 200", "HTTP/2 200")), head
            assert "x-lbm-notice-version: 2026-07b" in head.lower()
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; logged" in body
            assert "<script>" not in body
            assert "2026-07b" in body
    # the certificate shown for the notice host is issued by the interception CA
    shown = tunnel_cert_sha256(daemon, NOTICE, 443, Path(ca["certificate"]))
    assert shown != ca["sha256"]  # a leaf, not the CA itself
    verify = subprocess.run(
        ["curl", "-sS", "--proxy", daemon.proxy, "--cacert", ca["certificate"], "-o",
         "/dev/null", "-w", "%{ssl_verify_result}", f"https://{NOTICE}/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert verify.stdout == "0", verify.stderr
    # HTTP/2 (ALPN h2) on the intercepted notice connection
    h2 = curl(daemon, f"https://{NOTICE}/h2", "--http2", "-sS", "-o", "/dev/null", "-w",
              "%{http_version} %{http_code}", cacert=Path(ca["certificate"]))  # fmt: skip
    assert h2.stdout == b"2 200", h2.stderr
    # POST is refused, still without upstream
    r = curl(daemon, f"http://{NOTICE}/", "-X", "POST", "-d", "a=b", "-o", "/dev/null",
             "-w", "%{http_code}")  # fmt: skip
    assert r.stdout == b"405"
    # /lbm-notice on the proxy's own address: through the proxy (absolute form) and opened
    # directly (a browser given the gateway's address), for the subject too; never upstream
    own = f"{daemon.proxy.rstrip('/')}/lbm-notice"
    for source_ip in (OTHER_IP, SUBJECT_IP):
        via = curl(daemon, own, "-i", source_ip=source_ip)
        direct = subprocess.run(
            ["curl", "-sS", "-i", "--noproxy", "*", "--interface", source_ip, own],
            capture_output=True, timeout=30,
        )  # fmt: skip
        for got in (via, direct):
            assert got.returncode == 0, got.stderr
            head, _, body = got.stdout.decode().partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 200"), head
            assert "2026-07b" in body
    other_path = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
         "--interface", OTHER_IP, f"{daemon.proxy.rstrip('/')}/elsewhere"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert other_path.stdout != b"200"  # only /lbm-notice is the proxy's own page
    code, _out, err = daemon.stop()
    assert code == 0, err
    assert records(web_lbm.data_dir, identity) == []  # the subject's notice visits: not archived
    rows = [r for r in daemon.rows() if r.get("host") == NOTICE]
    assert len(rows) >= 5
    assert all(r["refs"] == [] and r["record_ids"] == [] for r in rows)
    assert all(r["notice_version"] == "2026-07b" for r in rows)
    answered = [r for r in rows if r["method"] in ("GET", "POST")]
    assert [(r["method"], r["status"], r["error_kind"]) for r in answered] == [
        ("GET", 200, None)
    ] * 6 + [("POST", 405, None)]  # the tunnel_cert_sha256 handshake sent no request


def test_lbm_proxy_ca_matches_openssl_and_is_kept(lbm: Lbm) -> None:
    ca = _ca(lbm)
    cert = Path(ca["certificate"])
    key = cert.with_name("mitmproxy-ca.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256", "-subject"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    fingerprint = out.stdout.split("=", 1)[1].split("\n", 1)[0].replace(":", "").lower()
    assert fingerprint == ca["sha256"]
    assert "lbm-gateway interception CA" in out.stdout
    assert ca["pem"] == cert.read_text()
    text = lbm("proxy", "ca", check=True).stdout
    assert f"sha256: {ca['sha256']}" in text and "-----BEGIN CERTIFICATE-----" in text
    assert "PRIVATE KEY" not in text and "PRIVATE KEY" not in lbm("proxy", "ca", "--json").stdout
    pem_only = lbm("proxy", "ca", "--pem-only", check=True).stdout
    assert pem_only == ca["pem"]
    # init again: the CA is kept
    lbm("init", check=True)
    assert _ca(lbm)["sha256"] == ca["sha256"]
    audit = (lbm.data_dir / "audit" / "audit.jsonl").read_text()
    assert "interception-ca" in audit  # the first init listed it as created
    assert "PRIVATE KEY" not in audit


def test_ensure_ca_is_idempotent_and_refuses_a_broken_ca(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    directory = ensure_ca(keys)
    first = ca_info(keys)
    assert ensure_ca(keys) == directory and ca_info(keys) == first
    key_file = directory / "mitmproxy-ca.pem"
    original = key_file.read_bytes()
    # a missing public copy is rewritten from the key file
    (directory / "mitmproxy-ca-cert.pem").unlink()
    ensure_ca(keys)
    assert ca_info(keys) == first
    # a key that does not match its certificate: refused, not replaced
    other = ensure_ca(tmp_path / "other") / "mitmproxy-ca.pem"
    other_key = other.read_bytes().split(b"-----BEGIN CERTIFICATE-----")[0]
    cert_part = original[original.index(b"-----BEGIN CERTIFICATE-----") :]
    key_file.write_bytes(other_key + cert_part)
    with pytest.raises(CaError, match="does not match"):
        ensure_ca(keys)
    key_file.write_bytes(b"garbage")
    with pytest.raises(CaError, match="not a PEM"):
        ensure_ca(keys)
    assert key_file.read_bytes() == b"garbage"
    key_file.unlink()
    with pytest.raises(CaError, match="run `lbm init`"):
        ca_info(keys)


def test_broken_ca_stops_init_with_a_clear_error(lbm: Lbm) -> None:
    key_file = Path(_ca(lbm)["certificate"]).with_name("mitmproxy-ca.pem")
    key_file.write_bytes(b"not a key")
    result = lbm("init")
    assert result.returncode == 1
    assert str(key_file) in result.stderr and "not a PEM" in result.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Notice.LBM.invalid", True),
        ("notice.lbm.invalid.", True),
        ("notice.lbm.invalid:443", True),
        ("xnotice.lbm.invalid", False),
        ("notice.lbm.invalid.evil.test", False),
        ("", False),
    ],
)
def test_is_notice_host(name: str, expected: bool) -> None:
    assert Notice(NOTICE, "t", "v").is_notice_host(name) is expected
    assert normalise_host("[::1]:443") == "::1"


def test_page_escapes_text_and_version() -> None:
    notice = Notice(NOTICE, "<b>x</b>", '1"<2>')
    page = notice.page.decode()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "1&quot;&lt;2&gt;" in page
    head = notice.response("HEAD")
    assert head.content == b"" and head.headers["Content-Length"] == str(len(notice.page))
    assert notice.response("DELETE").status_code == 405

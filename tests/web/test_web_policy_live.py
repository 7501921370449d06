"""Policy on live traffic through `lbm proxy run`: a grant while running, cancellation and expiry
(open intercepted connections closed, nothing more recorded), do-not-decrypt for a subject, 421
for a do-not-decrypt authority on a coalesced HTTP/2 connection, pinned-client fallback."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
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
    iso,
    lease,
    proxy_ca,
    records,
    set_option,
    tunnel_cert_sha256,
)
from web_upstream import DO_NOT_DECRYPT_NAME, Upstream

Start = Callable[..., ProxyDaemon]


def _intercepted(daemon: ProxyDaemon, up: Upstream, ca: Path) -> bool:
    seen = tunnel_cert_sha256(daemon, "www.example.test", up.https_port, ca, SUBJECT_IP)
    return seen != up.leaf_sha256


def _fingerprint_any(daemon: ProxyDaemon, up: Upstream, ca: Path, host: str) -> str:
    """The certificate fingerprint the subject is shown, trusting both our CA and the upstream's."""
    both = ca.parent / "both-cas.pem"
    both.write_bytes(ca.read_bytes() + b"\n" + up.ca_file.read_bytes())
    return tunnel_cert_sha256(daemon, host, up.https_port, both, SUBJECT_IP)


def _slow_curl(daemon: ProxyDaemon, up: Upstream, ca: Path) -> subprocess.Popen[bytes]:
    url = up.url("/slow?chunks=300&interval=0.1&size=100")
    return subprocess.Popen(
        ["curl", "-sS", "--proxy", daemon.proxy, "--interface", SUBJECT_IP, "--cacert", str(ca),
         "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "40", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
def leased(web_lbm: Lbm, tmp_path: Path) -> str:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    return investigator(web_lbm)


def test_grant_while_running_takes_effect_within_5s(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    assert not _intercepted(daemon, upstream, upstream.ca_file.parent / "ca.pem")
    web_lbm.grant(REF, SUBJECT)
    granted = time.monotonic()
    while True:
        try:
            if _intercepted(daemon, upstream, ca):
                break
        except ssl.SSLError:
            pass  # still passed through: our CA does not verify the real certificate
        assert time.monotonic() - granted < 5, "a new connection was not intercepted within 5 s"
        time.sleep(0.2)


def test_cancellation_closes_the_open_connection_and_stops_recording(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    slow = _slow_curl(daemon, upstream, ca)
    time.sleep(1.5)
    web_lbm("auth", "cancel", REF, "--reason", "test", "--officer", "p100", check=True)
    cancelled = time.monotonic()
    slow.wait(timeout=30)
    assert time.monotonic() - cancelled < 6, "the open intercepted connection stayed open"
    assert slow.returncode != 0  # cut off, not completed
    r = curl(daemon, upstream.url("/bytes/1000?seed=z"), "-o", "/dev/null", "-w", "%{http_code}",
             source_ip=SUBJECT_IP, cacert=upstream.ca_file)  # fmt: skip
    assert r.stdout == b"200", r.stderr  # passed through now: the real certificate verifies
    daemon.stop()
    after = [r for r in daemon.rows() if r["ts"].timestamp() > time.time() - 3600]
    assert all(r["refs"] == [] for r in after if r["decision"] == "passed")
    assert any(r["decision"] == "passed" and r["principal"] == SUBJECT for r in after)


def test_expiry_with_the_fake_clock_closes_and_passes(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    web_lbm.grant(REF, SUBJECT, command="urgent", when=iso(t0))  # expires 72 h after t0
    run = web_lbm.data_dir / "run"
    (run / "fake-now").write_text(iso(t0 + timedelta(hours=1)))
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    assert _intercepted(daemon, upstream, ca)
    slow = _slow_curl(daemon, upstream, ca)
    time.sleep(1.5)
    daemon.set_clock(t0 + timedelta(hours=73))
    moved = time.monotonic()
    slow.wait(timeout=30)
    assert time.monotonic() - moved < 6 and slow.returncode != 0
    seen = _fingerprint_any(daemon, upstream, ca, "www.example.test")
    assert seen == upstream.leaf_sha256  # expired: passed through unopened


def test_a_do_not_decrypt_sni_on_a_tunnel_to_another_host_is_intercepted(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    """The attack: a subject opens `CONNECT www.example.test` but names a do-not-decrypt server
    in the SNI, hoping the tunnel is passed unopened. The CONNECT target decides too."""
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    both = ca.parent / "both-cas.pem"
    both.write_bytes(ca.read_bytes() + b"\n" + upstream.ca_file.read_bytes())
    port = upstream.https_port
    spoofed = tunnel_cert_sha256(
        daemon, "www.example.test", port, both, SUBJECT_IP, sni=DO_NOT_DECRYPT_NAME
    )
    honest = tunnel_cert_sha256(daemon, DO_NOT_DECRYPT_NAME, port, both, SUBJECT_IP)
    assert honest == upstream.leaf_sha256  # a real do-not-decrypt tunnel stays unopened
    assert spoofed != upstream.leaf_sha256  # the spoofed one is opened: our CA's certificate
    daemon.stop()
    rows = [r for r in daemon.rows() if r["server_name"] == DO_NOT_DECRYPT_NAME]
    assert sorted(r["decision"] for r in rows) == ["intercepted", "passed"], rows


@pytest.mark.parametrize(
    ("hosts", "categories", "protected"),
    [
        (None, "[]", True),  # the flat [do_not_decrypt] hosts list alone (*.nhs.uk)
        ("[]", None, True),  # the default categories alone (health:*.nhs.uk)
        ("[]", '["welfare:*.example.org"]', False),  # neither names it: opened for the subject
    ],
    ids=["hosts", "categories", "neither"],
)
def test_do_not_decrypt_host_is_passed_for_a_subject(
    start_proxy: Start,
    upstream: Upstream,
    web_lbm: Lbm,
    leased: str,
    hosts: str | None,
    categories: str | None,
    protected: bool,
) -> None:
    if hosts is not None:
        set_option(web_lbm.data_dir, "do_not_decrypt", "hosts", hosts)
    if categories is not None:
        set_option(web_lbm.data_dir, "do_not_decrypt", "categories", categories)
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    seen = _fingerprint_any(daemon, upstream, ca, DO_NOT_DECRYPT_NAME)
    assert (seen == upstream.leaf_sha256) is protected
    assert _fingerprint_any(daemon, upstream, ca, "www.example.test") != upstream.leaf_sha256
    daemon.stop()
    dnd = [r for r in daemon.rows() if r["server_name"] == DO_NOT_DECRYPT_NAME]
    assert dnd
    if protected:
        assert all(r["decision"] == "passed" and r["do_not_decrypt"] for r in dnd)
        assert all(r["refs"] == [] and r["principal"] == SUBJECT for r in dnd)
    else:
        # opened for the subject (a handshake, no request: nothing recorded, so no refs)
        assert all(r["decision"] == "intercepted" and not r["do_not_decrypt"] for r in dnd)


def test_coalesced_http2_request_for_do_not_decrypt_authority_gets_421(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    identity = leased
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    transport = httpx.HTTPTransport(
        proxy=daemon.proxy,
        http2=True,
        verify=ssl.create_default_context(cafile=str(ca)),
        local_address=SUBJECT_IP,
    )
    secret = "dndsecret-" + str(time.time_ns())
    with httpx.Client(transport=transport, timeout=20) as client:
        url = upstream.url("/echo/first")
        ok = client.get(url)
        assert ok.status_code == 200 and ok.http_version == "HTTP/2"
        # same connection (same origin in the pool); :authority names the do-not-decrypt host
        coalesced = client.post(
            upstream.url("/echo/second"),
            headers={"Host": f"{DO_NOT_DECRYPT_NAME}:{upstream.https_port}"},
            content=secret.encode(),
        )
        assert coalesced.status_code == 421 and coalesced.http_version == "HTTP/2"
    daemon.stop()
    rows = [r for r in daemon.rows() if r["method"] in ("GET", "POST")]
    first = next(r for r in rows if r["method"] == "GET")
    second = next(r for r in rows if r["method"] == "POST")
    assert first["refs"] == [REF] and first["record_ids"]
    assert second["status"] == 421 and second["refs"] == [] and second["record_ids"] == []
    assert second["uid"] == first["uid"]  # one connection
    archived = b"".join(r.data for r in records(web_lbm.data_dir, identity))
    assert b"/echo/first" in archived
    assert secret.encode() not in archived and DO_NOT_DECRYPT_NAME.encode() not in archived


def test_pinned_client_refusal_then_fallback_to_pass_through(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, leased: str
) -> None:
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    # a pinned app trusts only the real server's CA: our certificate is refused
    with pytest.raises(ssl.SSLError):
        tunnel_cert_sha256(daemon, "www.example.test", upstream.https_port, upstream.ca_file,
                           SUBJECT_IP)  # fmt: skip
    time.sleep(0.3)
    # the next connection from that client to that server is passed through
    seen = tunnel_cert_sha256(daemon, "www.example.test", upstream.https_port, upstream.ca_file,
                              SUBJECT_IP)  # fmt: skip
    assert seen == upstream.leaf_sha256
    # another server is still intercepted for the subject
    ca = proxy_ca(web_lbm.data_dir)
    assert tunnel_cert_sha256(daemon, "other.example.test", upstream.https_port, ca,
                              SUBJECT_IP) != upstream.leaf_sha256  # fmt: skip
    daemon.stop()
    rows = [r for r in daemon.rows() if r["server_name"] == "www.example.test"]
    kinds = [r["error_kind"] for r in rows]
    assert "client_tls_refused" in kinds and "pinned_fallback" in kinds
    fallback = next(r for r in rows if r["error_kind"] == "pinned_fallback")
    assert fallback["decision"] == "passed" and fallback["refs"] == []

"""Privacy canaries: a non-subject's path, query, header, cookie, request body and response body,
and malformed requests, reach no file under the data dir (raw bytes, hex, and every decoded
Parquet value) and no output of the daemon; the subject's tokens are found after decrypting."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
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
    proxy_ca,
    records,
)
from web_upstream import Upstream

Start = Callable[..., ProxyDaemon]


def _tokens(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}x{uuid.uuid4().hex[:12]}" for i in range(n)]


def _requests(daemon: ProxyDaemon, up: Upstream, toks: list[str], ip: str, ca: Path) -> None:
    path, query, header, cookie, body, resp = toks[:6]
    for tls in (False, True):
        url = up.url(f"/echo/{path}?q={query}&r={resp}", tls=tls)
        r = curl(daemon, url, "-H", f"X-Canary: {header}", "-b", f"session={cookie}",
                 "--data-binary", body, source_ip=ip, cacert=ca)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert path.encode() in r.stdout and body.encode() in r.stdout  # the echo came back


def _malformed(daemon: ProxyDaemon, toks: list[str]) -> None:
    sends = [
        f"GET /{toks[0]} HTTP/1.1\r\nHost: a.example\r\nBad header {toks[1]}\r\n\r\n",
        f"BROKEN{toks[2]} request line\r\n\r\n",
        f"GET http://a.example/{toks[3]} HTTP/1.1\r\nProxy-Authorization: Basic {toks[4]}\r\nX: ",
        f"GET /{toks[5]} HTTP/1.1\r\nHost: a.example\r\nContent-Length: zz{toks[6]}\r\n\r\n",
    ]
    for text in sends:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5,
                                      source_address=(OTHER_IP, 0)) as s:  # fmt: skip
            s.sendall(text.encode())
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    # a broken TLS ClientHello inside a tunnel (mitmproxy logs it as hex)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5,
                                  source_address=(OTHER_IP, 0)) as s:  # fmt: skip
        s.sendall(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
        time.sleep(0.3)
        s.sendall(b"\x16\x03\x01\x00\x30" + toks[7].encode().ljust(48, b"z"))
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def _leaks(data_dir: Path, outputs: list[str], tokens: list[str]) -> list[str]:
    found = []
    needles = [(t, t.encode()) for t in tokens] + [(t, t.encode().hex().encode()) for t in tokens]
    for f in data_dir.rglob("*"):
        if not f.is_file():
            continue
        raw = f.read_bytes()
        for t, n in needles:
            if n in raw:
                found.append(f"{t} in {f}")
        if f.suffix == ".parquet":
            text = repr(pq.read_table(f).to_pylist())
            found += [f"{t} in decoded {f}" for t in tokens if t in text]
    for out in outputs:
        found += [f"{t} in daemon output" for t in tokens if t in out or t.encode().hex() in out]
    return found


def test_non_subject_content_is_nowhere_subject_content_is_archived(
    start_proxy: Start, upstream: Upstream, web_lbm: Lbm, tmp_path: Path
) -> None:
    lease(web_lbm, tmp_path, (SUBJECT, SUBJECT_IP), (OTHER, OTHER_IP))
    identity = investigator(web_lbm)
    web_lbm.grant(REF, SUBJECT)
    daemon = start_proxy()
    ca = proxy_ca(web_lbm.data_dir)
    other = _tokens("nscanary", 6)
    bad = _tokens("badcanary", 8)
    mine = _tokens("subjcanary", 6)
    _requests(daemon, upstream, other, OTHER_IP, upstream.ca_file)
    _malformed(daemon, bad)
    _requests(daemon, upstream, mine, SUBJECT_IP, ca)
    code, out, err = daemon.stop()
    assert code == 0, err
    rows = daemon.rows()
    assert {r["principal"] for r in rows} >= {SUBJECT, OTHER}
    assert any(r["error_kind"] for r in rows if r["principal"] == OTHER)
    leaks = _leaks(web_lbm.data_dir, [out, err], other + bad)
    assert leaks == []
    # the subject's tokens are in the archive, and only there (encrypted)
    plain = b"".join(r.data for r in records(web_lbm.data_dir, identity))
    for t in mine:
        assert t.encode() in plain, t
    assert _leaks(web_lbm.data_dir, [out, err], mine) == []

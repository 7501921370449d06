"""Application metadata (DNS names, TLS server names and versions, HTTP hosts and methods)
found in the dev corpus matches Zeek's dns/ssl/http logs and the corpus MANIFEST.

Zeek's logs list every query/handshake/request; ours keep the first request of each flow
(HTTP) and the ClientHello/ServerHello of each flow (TLS), so Zeek's distinct values must all
be among ours. MANIFEST lists (possibly truncated) names per capture from a dpkt walk.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from capture_zeeklogs import (
    corpus,
    manifest_names,
    read_zeek_log,
    recommended_logs,
    replay_tables,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.app.heads import http_host, parse_client_hello, parse_server_hello
from capture.app.meta import AppMeta


@pytest.fixture(scope="module")
def dev_tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = corpus()
    files = sorted((root / "pcaps" / "dev").iterdir())
    flow, dns = replay_tables(files, tmp_path_factory.mktemp("appmeta") / "data")
    per: dict[str, dict[str, set[str]]] = {}
    for r in flow.to_pylist():
        d = per.setdefault(
            r["interface"],
            {"sni": set(), "host": set(), "method": set(), "tls": set(), "dns": set()},
        )
        for key, col in (
            ("sni", "server_name"),
            ("host", "http_host"),
            ("method", "http_method"),
            ("tls", "tls_version"),
        ):
            if r[col]:
                d[key].add(r[col])
    for r in dns.to_pylist():
        d = per.setdefault(
            r["interface"],
            {"sni": set(), "host": set(), "method": set(), "tls": set(), "dns": set()},
        )
        if r["qname"]:
            d["dns"].add(r["qname"].lower())
    return root, per


def _zeek_values(path: Path, column: str) -> set[str]:
    cols, rows = read_zeek_log(path)
    if column not in cols:
        return set()
    return {r[column] for r in rows if r[column] not in ("-", "(empty)", "")}


# Deliberate differences: captures whose names Zeek finds by analysis we do not do.
NOT_EXPECTED = {
    "zeek__websocket__wstunnel-https.pcap": "TLS inside WebSocket frames after an HTTP "
    "upgrade: Zeek's websocket analyzer feeds ssl; we read only the first packets' heads",
}


def _cases(kind: str) -> list[object]:
    try:
        root = corpus()
    except pytest.skip.Exception:
        return []
    return [
        pytest.param(
            p.name,
            marks=[pytest.mark.skip(reason=NOT_EXPECTED[p.name])] if p.name in NOT_EXPECTED else [],
            id=p.name,
        )
        for p in sorted((root / "pcaps" / "dev").iterdir())
        if kind in recommended_logs(p.name, root)
    ]


@pytest.mark.parametrize("capture", _cases("dns.log"))
def test_dns_names_match_zeek(dev_tables, capture: str) -> None:
    root, per = dev_tables
    zeek = {q.lower() for q in _zeek_values(recommended_logs(capture, root)["dns.log"], "query")}
    ours = per.get(capture, {}).get("dns", set())
    print(f"{capture}: zeek {sorted(zeek)} ours {sorted(ours)}")
    assert zeek, "baseline lists no query names"
    assert zeek <= ours


@pytest.mark.parametrize("capture", _cases("ssl.log"))
def test_tls_server_names_and_versions_match_zeek(dev_tables, capture: str) -> None:
    root, per = dev_tables
    log = recommended_logs(capture, root)["ssl.log"]
    ours = per.get(capture, {})
    sni = _zeek_values(log, "server_name")
    versions = _zeek_values(log, "version")
    print(
        f"{capture}: zeek sni {sni} versions {versions}; ours {ours.get('sni')} {ours.get('tls')}"
    )
    assert sni <= ours.get("sni", set())
    assert versions <= ours.get("tls", set())
    assert sni or versions, "baseline lists neither server names nor versions"


@pytest.mark.parametrize("capture", _cases("http.log"))
def test_http_hosts_and_methods_match_zeek(dev_tables, capture: str) -> None:
    root, per = dev_tables
    log = recommended_logs(capture, root)["http.log"]
    ours = per.get(capture, {})
    hosts = _zeek_values(log, "host")
    print(f"{capture}: zeek hosts {hosts}; ours {ours.get('host')} {ours.get('method')}")
    methods = _zeek_values(log, "method")
    assert hosts or methods, "baseline lists neither hosts nor methods"
    assert hosts <= ours.get("host", set())
    assert methods <= ours.get("method", set())


def test_names_listed_in_manifest_are_found(dev_tables) -> None:
    root, per = dev_tables
    checked = 0
    for capture, kinds in manifest_names(root).items():
        if not (root / "pcaps" / "dev" / capture).exists():
            continue
        ours = per.get(capture, {})
        for kind, (count, names) in kinds.items():
            have = {
                "SNI": ours.get("sni", set()),
                "HTTP Host": ours.get("host", set()),
                "DNS q": ours.get("dns", set()),
            }[kind]
            for listed in names:
                checked += 1
                # Zeek (and we) drop the port of a Host header; MANIFEST keeps it
                name = listed.rsplit(":", 1)[0] if kind == "HTTP Host" else listed
                # MANIFEST truncates long names: a listed name is a prefix of one of ours
                assert any(h.startswith(name.lower()) for h in have), (capture, kind, name, have)
            if kind == "SNI":
                assert len(have) == count, (capture, have)
    assert checked >= 20


def test_client_hello_split_over_segments_gives_sni(dev_tables) -> None:
    """chrome-1250 (X25519Kyber768): the ClientHello spans TCP segments."""
    _, per = dev_tables
    assert per["zeek__tls__chrome-1250-tls-x25519-kyber.pcap"]["sni"] == {"lh3.google.com"}
    assert per["zeek__tls__chrome-1250-tls-x25519-kyber.pcap"]["tls"] == {"TLSv13"}


def test_http_head_yields_host_and_method_never_path() -> None:
    app = AppMeta()
    head = b"POST /secret/path?token=CANARY HTTP/1.1\r\nHost: example.org:8080\r\nX: y\r\n\r\n"
    app.packet("C1", 0, 7, True, 1, head[:20], 1000)
    assert app.flows["C1"].http_host is None  # head incomplete: keep waiting
    app.packet("C1", 0, 7, True, 2, head[20:], 1020)
    meta = app.end("C1")
    assert meta["http_host"] == "example.org" and meta["http_method"] == "POST"
    assert "CANARY" not in repr(meta) and "secret" not in repr(meta)
    assert "C1" not in app.flows  # parser state (and any buffered payload) is gone
    assert http_host(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n") == "2001:db8::1"


def test_truncated_client_hello_waits_then_gives_up_cleanly() -> None:
    assert parse_client_hello(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") is None
    assert parse_client_hello(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == ""


def test_dns_parser_agrees_with_dpkt_on_the_corpus() -> None:
    """capture.app.dnsparse (fast, bounded) reads what dpkt reads, on every DNS datagram of the
    dev corpus that dpkt can parse."""
    import dpkt

    from capture.app.dnsparse import DnsError, parse_dns
    from capture.decode.decoder import read_batches

    compared = 0
    for pcap in sorted((corpus() / "pcaps" / "dev").iterdir()):
        for b in read_batches(pcap):
            for i in range(len(b)):
                if b.status[i] or b.proto[i] != 17 or 53 not in (b.sport[i], b.dport[i]):
                    continue
                msg = b.payload(i)
                try:
                    ref = dpkt.dns.DNS(msg)
                except (dpkt.UnpackError, IndexError, ValueError):
                    continue
                try:
                    ours = parse_dns(msg)
                except DnsError:
                    pytest.fail(f"{pcap.name}#{i}: dpkt reads it, we do not")
                assert (ours.id, ours.qr, ours.rcode) == (ref.id, ref.qr, ref.rcode)
                assert [(q.name, q.type) for q in ours.qd] == [(q.name, q.type) for q in ref.qd]
                assert [(a.name, a.type, a.ttl) for a in ours.an] == [
                    (a.name, a.type, a.ttl) for a in ref.an
                ]
                compared += 1
    assert compared >= 50


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=-5, max_value=700))
def test_head_parsers_never_raise_or_read_out_of_bounds(data: bytes, cap: int) -> None:
    """The C fast path and the Python parsers take arbitrary bytes (also claimed lengths
    longer than the buffer) without crashing, and report positions inside the buffer."""
    import numpy as np

    from capture.app.dnsparse import DnsError, parse_dns
    from capture.app.scan import app_scan

    for prefix in (b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x02", b"GET / HTTP/1.1\r\nHost:"):
        payload = prefix + data
        buf = np.frombuffer(payload + b"\x00" * 8, np.uint8)
        kind, a_off, a_len, _ = app_scan(buf, np.array([0], np.int64), np.array([cap], np.int32))
        if kind[0] in (1, 3) and a_len[0] > 0:
            assert a_off[0] >= 0 and a_off[0] + a_len[0] <= len(payload)
        parse_client_hello(payload)
        parse_server_hello(payload)
        http_host(payload)
        with contextlib.suppress(DnsError):
            parse_dns(payload)

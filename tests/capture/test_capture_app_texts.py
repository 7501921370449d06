"""The fast path's texts (TLS server names, HTTP hosts and methods) are made once per distinct
value and shared by the flows that show it, within a bound: a flow slot keeps its text until
the flow ends, so 200k open flows to a few thousand servers hold a few thousand strings."""

from __future__ import annotations

from capture.app.feed import TEXTS_MAX, _sni_text, _texts
from capture.app.heads import norm_host


def test_the_same_bytes_give_the_same_string_object() -> None:
    cache: dict[bytes, str | None] = {}
    raws = [b"WWW.Example.ORG", b"www.example.org", b"WWW.Example.ORG", b""]
    a = _texts(cache, list(raws), _sni_text)
    b = _texts(cache, [bytes(bytearray(r)) for r in raws], _sni_text)  # new bytes objects
    assert a == ["www.example.org", "www.example.org", "www.example.org", None]
    assert all(x is y for x, y in zip(a, b, strict=True))
    assert a[0] is a[2]


def test_hosts_keep_their_own_conversion_and_none() -> None:
    cache: dict[bytes, str | None] = {}
    got = _texts(cache, [b"web1.example.org:8080", None, b"[2001:db8::1]:80"], norm_host)
    assert got == ["web1.example.org", None, "2001:db8::1"]


def test_the_cache_is_bounded_with_a_new_name_per_flow() -> None:
    cache: dict[bytes, str | None] = {}
    for i in range(3 * TEXTS_MAX):
        (text,) = _texts(cache, [f"h{i}.example.com".encode()], _sni_text)
        assert text == f"h{i}.example.com"
        assert len(cache) <= TEXTS_MAX + 1

"""Bech32 (BIP 173) as age uses it for keys: `age1...` and `AGE-SECRET-KEY-1...`, without
BIP 173's 90-character limit. Encoding returns lower case; decoding accepts one case."""

from __future__ import annotations

from collections.abc import Iterable

from store import StoreError


class Bech32Error(StoreError):
    """Not valid Bech32 (bad character, mixed case, checksum or padding)."""


_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: Iterable[int], frm: int, to: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for value in data:
        acc = (acc << frm) | value
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or (acc << (to - bits)) & maxv:
        raise Bech32Error("bech32: invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert(data, 8, 5, True)
    chk = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(chk >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("bech32: mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise Bech32Error("bech32: no separator or too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    try:
        values = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise Bech32Error("bech32: invalid character") from None
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise Bech32Error("bech32: bad checksum")
    return hrp, bytes(_convert(values[:-6], 5, 8, False))


# -- age X25519 recipients ------------------------------------------------------------------
_P = 2**255 - 19
# u-coordinates of the points of small order (1, 2, 4, 8) on Curve25519 and its twist: a
# recipient equal to one of these (after RFC 7748's masking of the top bit and reduction mod p)
# makes every shared secret predictable (all zero), so anything wrapped to it is readable by all.
_SMALL_ORDER_U = frozenset(
    {
        0,
        1,
        _P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def is_small_order_x25519(point: bytes) -> bool:
    """True for an X25519 public key of small order (all-zero shared secrets), in any encoding."""
    u = int.from_bytes(point, "little") & ((1 << 255) - 1)
    return u % _P in _SMALL_ORDER_U


def parse_age_recipient(text: str) -> bytes:
    """The 32-byte X25519 point of an `age1...` recipient; Bech32Error says what is wrong
    (not `age1` lower case, a bad checksum, the wrong length, or a small-order point)."""
    if not text.startswith("age1") or text != text.lower():
        raise Bech32Error("not an age X25519 recipient (age1..., lower case)")
    hrp, data = bech32_decode(text)
    if hrp != "age" or len(data) != 32:
        raise Bech32Error("not an age X25519 recipient (age1... of 32 bytes)")
    if is_small_order_x25519(data):
        raise Bech32Error("a low-order X25519 point (anyone could read what is wrapped to it)")
    return data

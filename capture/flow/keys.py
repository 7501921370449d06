"""Flow keys, Zeek's port heuristics, uids and Community ID v1, vectorised where it pays.

- `canonical_hash`: a secretly seeded 64-bit hash of a direction-free 5-tuple (both directions
  of a connection land in one group; nobody outside can make two connections share one).
- `icmp_counterpart`: Zeek's (and Community ID's) ICMP "ports": type and the type of the
  matching reply/request, or the code for one-way types.
- `likely_server`: Zeek's `likely_server_ports` heuristic (ports its analyzers register).
- `make_uids`: Zeek-like connection uids (`C` + base62), deterministic under a seeded rng.
- `community_id`: Community ID v1 (https://github.com/corelight/community-id-spec), checked
  against the `communityid` package in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from capture.flow import tcpstate

if TYPE_CHECKING:
    from capture.flow.uids import UidBits

# Zeek names; every other IP protocol (SCTP too: Zeek has no analyzer) is "unknown_transport"
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}

# ICMPv4 / ICMPv6 request <-> reply pairs (Zeek ICMP4_counterpart / ICMP6_counterpart).
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {
    a: b
    for p in ((128, 129), (133, 134), (135, 136), (130, 131), (139, 140), (144, 145))
    for a, b in (p, p[::-1])
}
_CP4 = np.full(256, -1, np.int32)
_CP6 = np.full(256, -1, np.int32)
for _k, _v in _ICMP4_PAIRS.items():
    _CP4[_k] = _v
for _k, _v in _ICMP6_PAIRS.items():
    _CP6[_k] = _v

# Ports Zeek's default analyzers register (Analyzer::register_for_ports) -> likely servers.
_TCP_SERVER = {
    21,
    22,
    23,
    25,
    53,
    80,
    81,
    88,
    110,
    135,
    139,
    143,
    179,
    389,
    443,
    445,
    502,
    563,
    585,
    587,
    614,
    631,
    636,
    989,
    990,
    992,
    993,
    995,
    1080,
    1433,
    1883,
    2811,
    3128,
    3306,
    3389,
    5060,
    5222,
    5223,
    5269,
    5432,
    5900,
    6379,
    6666,
    6667,
    6668,
    6669,
    8000,
    8080,
    8888,
    20000,
}
_UDP_SERVER = {
    53,
    67,
    68,
    69,
    88,
    123,
    137,
    161,
    162,
    443,
    500,
    514,
    1812,
    1813,
    2123,
    2152,
    3544,
    4500,
    4789,
    5060,
    5353,
    5355,
    6081,
}
LS_TCP = np.zeros(65536, bool)  # likely server ports, by protocol
LS_UDP = np.zeros(65536, bool)
LS_TCP[list(_TCP_SERVER)] = True
LS_UDP[list(_UDP_SERVER)] = True


def icmp_counterpart(
    proto: npt.NDArray[np.uint8], itype: npt.NDArray[np.uint16], code: npt.NDArray[np.uint16]
) -> npt.NDArray[np.uint16]:
    """The responder 'port' of ICMP packets: counterpart type, or the code if one-way."""
    t = np.minimum(itype, 255).astype(np.intp)
    cp = np.where(proto == 58, _CP6[t], _CP4[t])
    return np.where(cp >= 0, cp, code).astype(np.uint16)


def icmp_one_way(proto: int, itype: int) -> bool:
    return itype not in (_ICMP6_PAIRS if proto == 58 else _ICMP4_PAIRS)


def likely_server(
    proto: npt.NDArray[np.uint8], port: npt.NDArray[np.uint16]
) -> npt.NDArray[np.bool_]:
    p = port.astype(np.intp)
    return np.asarray(np.where(proto == 6, LS_TCP[p], np.where(proto == 17, LS_UDP[p], False)))


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def canonical_hash(
    src: npt.NDArray[np.uint8],
    dst: npt.NDArray[np.uint8],
    sport: npt.NDArray[np.uint16],
    dport: npt.NDArray[np.uint16],
    proto: npt.NDArray[np.uint8],
    seed: int | None = None,
) -> npt.NDArray[np.uint64]:
    """Direction-free 64-bit key of each packet's 5-tuple: `canonical_hash_np`'s, in one C
    pass (`flow_keys` in `_cid.c`) that releases the GIL; `seed` default: `KEY_SEED`."""
    n = proto.shape[0]
    if src.shape != (n, 16) or dst.shape != (n, 16) or sport.shape != (n,) or dport.shape != (n,):
        raise ValueError("canonical_hash: columns of different lengths")  # C reads n rows
    out = np.empty(n, np.uint64)
    if n == 0:
        return out
    fb = tcpstate.ffi.from_buffer
    tcpstate.lib.flow_keys(
        fb("uint8_t[]", np.ascontiguousarray(src, np.uint8)),
        fb("uint8_t[]", np.ascontiguousarray(dst, np.uint8)),
        fb("uint16_t[]", np.ascontiguousarray(sport, np.uint16)),
        fb("uint16_t[]", np.ascontiguousarray(dport, np.uint16)),
        fb("uint8_t[]", np.ascontiguousarray(proto, np.uint8)),
        n,
        KEY_SEED if seed is None else seed,
        fb("uint64_t[]", out),
    )
    return out


_GROUP_SEED = int.from_bytes(os.urandom(8), "little")  # see group_keys in _cid.c
KEY_SEED = int.from_bytes(os.urandom(8), "little")  # the keys' secret start: see flow_keys


def group_keys(
    h: npt.NDArray[np.uint64],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`np.unique(h, return_index=True, return_inverse=True)` for mixed 64-bit keys: the
    groups are found in one C pass over a hash table (releasing the GIL) and only the
    distinct keys are sorted."""
    n = h.shape[0]
    if n == 0:
        return h[:0].copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    h = np.ascontiguousarray(h, np.uint64)
    size = 1 << (2 * n).bit_length()  # a power of two > 2n: short probes
    table = np.full(size, -1, np.int64)
    first = np.empty(n, np.int64)
    inv = np.empty(n, np.int64)
    fb = tcpstate.ffi.from_buffer
    k = int(
        tcpstate.lib.group_keys(
            fb("uint64_t[]", h),
            n,
            fb("int64_t[]", table),
            size - 1,
            _GROUP_SEED,
            fb("int64_t[]", first),
            fb("int64_t[]", inv),
        )
    )
    first = first[:k]
    keys = h[first]
    order = np.argsort(keys)
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return keys[order], first[order], rank[inv]


def canonical_hash_np(
    src: npt.NDArray[np.uint8],
    dst: npt.NDArray[np.uint8],
    sport: npt.NDArray[np.uint16],
    dport: npt.NDArray[np.uint16],
    proto: npt.NDArray[np.uint8],
    seed: int | None = None,
) -> npt.NDArray[np.uint64]:
    """The key's definition in numpy (the C pass is tested against it)."""
    s = np.ascontiguousarray(src).view("<u8")
    d = np.ascontiguousarray(dst).view("<u8")
    sb = np.ascontiguousarray(src).view(">u8")
    db = np.ascontiguousarray(dst).view(">u8")
    swap = (sb[:, 0] > db[:, 0]) | (
        (sb[:, 0] == db[:, 0])
        & ((sb[:, 1] > db[:, 1]) | ((sb[:, 1] == db[:, 1]) & (sport > dport)))
    )
    lo0 = np.where(swap, d[:, 0], s[:, 0])
    lo1 = np.where(swap, d[:, 1], s[:, 1])
    hi0 = np.where(swap, s[:, 0], d[:, 0])
    hi1 = np.where(swap, s[:, 1], d[:, 1])
    lp = np.where(swap, dport, sport).astype(np.uint64)
    hp = np.where(swap, sport, dport).astype(np.uint64)
    ports = (lp << np.uint64(24)) | (hp << np.uint64(8)) | proto.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(lo0 ^ np.uint64(0x9E3779B97F4A7C15 ^ (KEY_SEED if seed is None else seed)))
        h = _mix(h ^ lo1)
        h = _mix(h ^ hi0)
        h = _mix(h ^ hi1)
        h = _mix(h ^ ports)
    return np.asarray(h, np.uint64)


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def make_uid_bytes(rng: np.random.Generator | UidBits, n: int) -> npt.NDArray[np.bytes_]:
    """n Zeek-like uids as an `S17` array: 'C' followed by 16 base62 digits of random bits
    (the digits written in C, `uid_text`; `make_uid_bytes_np` is their definition)."""
    if n == 0:
        return np.zeros(0, "S17")
    r = np.ascontiguousarray(rng.integers(0, 62**8, size=(n, 2), dtype=np.int64))
    out = np.zeros(n, "S17")
    fb = tcpstate.ffi.from_buffer
    if tcpstate.lib.uid_text(fb("int64_t[]", r), n, fb("char[]", out.view(np.uint8))) != 0:
        raise ValueError("uid_text: a random value out of range")  # cannot happen
    return out


def make_uid_bytes_np(rng: np.random.Generator | UidBits, n: int) -> npt.NDArray[np.bytes_]:
    """`make_uid_bytes` in numpy (the C pass is tested against it)."""
    if n == 0:
        return np.zeros(0, "S17")
    r = rng.integers(0, 62**8, size=(n, 2), dtype=np.int64)
    digits = np.empty((n, 17), np.uint8)
    digits[:, 0] = ord("C")
    alphabet = np.frombuffer(_B62.encode(), np.uint8)
    for half in range(2):
        v = r[:, half].copy()
        for k in range(8):
            digits[:, 1 + half * 8 + k] = alphabet[v % 62]
            v //= 62
    return digits.view("S17").ravel()


def make_uids(rng: np.random.Generator | UidBits, n: int) -> list[str]:
    """n Zeek-like uids: 'C' followed by 16 base62 digits of random bits (vectorised)."""
    out: list[str] = make_uid_bytes(rng, n).astype("U17").tolist()
    return out


def _packed(addr16: bytes) -> bytes:
    return addr16[12:] if addr16[:12] == b"\x00" * 10 + b"\xff\xff" else addr16


def community_id(
    src16: bytes, dst16: bytes, proto: int, sport: int, dport: int, seed: int = 0
) -> str:
    """Community ID v1 of one flow. For ICMP, `sport` is the type and `dport` the counterpart
    type or code (as the flow table stores them)."""
    s, d = _packed(src16), _packed(dst16)
    one_way = proto in (1, 58) and icmp_one_way(proto, sport)
    if proto in (6, 17, 132, 1, 58):
        if not one_way and (s > d or (s == d and sport > dport)):
            s, d, sport, dport = d, s, dport, sport
        data = struct.pack("!H", seed) + s + d + struct.pack("!BBHH", proto, 0, sport, dport)
    else:
        if s > d:
            s, d = d, s
        data = struct.pack("!H", seed) + s + d + struct.pack("!BB", proto, 0)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def community_ids(
    orig_h: npt.NDArray[np.uint8],
    resp_h: npt.NDArray[np.uint8],
    proto: npt.NDArray[np.uint8],
    op: npt.NDArray[np.uint16],
    rp: npt.NDArray[np.uint16],
    seed: int = 0,
) -> list[str]:
    """`community_id` of k flows given as columns (a list of str)."""
    out: list[str] = community_id_bytes(orig_h, resp_h, proto, op, rp, seed).astype("U30").tolist()
    return out


def community_id_array(
    orig_h: npt.NDArray[np.uint8],
    resp_h: npt.NDArray[np.uint8],
    proto: npt.NDArray[np.uint8],
    op: npt.NDArray[np.uint16],
    rp: npt.NDArray[np.uint16],
    seed: int = 0,
) -> Any:
    """`community_ids` as an Arrow string array (no Python string per flow)."""
    import pyarrow as pa  # lazily: the first packet needs none

    raw = community_id_bytes(orig_h, resp_h, proto, op, rp, seed)
    k = raw.size
    offsets = np.arange(0, (k + 1) * CID_LEN, CID_LEN, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), k, [None, pa.py_buffer(offsets), pa.py_buffer(raw.view(np.uint8))]
    )


CID_LEN = 30  # "1:" and the base64 of a SHA-1 digest
_CID_PORTS = np.zeros(256, bool)  # protocols whose Community ID includes the ports
_CID_PORTS[[6, 17, 132, 1, 58]] = True


def community_id_bytes(
    orig_h: npt.NDArray[np.uint8],
    resp_h: npt.NDArray[np.uint8],
    proto: npt.NDArray[np.uint8],
    op: npt.NDArray[np.uint16],
    rp: npt.NDArray[np.uint16],
    seed: int = 0,
) -> npt.NDArray[np.bytes_]:
    """`community_id` of k flows given as columns, as an `S30` array: one C pass
    (`cid_flows`: endpoint order, the hash input, SHA-1 and base64) for the protocols with
    ports, `community_id` for the others."""
    k = proto.shape[0]
    out = np.zeros(k, f"S{CID_LEN}")
    if k == 0:
        return out
    o = np.ascontiguousarray(orig_h, np.uint8).reshape(k, 16)
    r = np.ascontiguousarray(resp_h, np.uint8).reshape(k, 16)
    proto = np.ascontiguousarray(proto, np.uint8)
    fb = tcpstate.ffi.from_buffer
    tcpstate.lib.cid_flows(
        fb("uint8_t[]", o),
        fb("uint8_t[]", r),
        fb("uint8_t[]", proto),
        fb("uint16_t[]", np.ascontiguousarray(op, np.uint16)),
        fb("uint16_t[]", np.ascontiguousarray(rp, np.uint16)),
        k,
        fb("int32_t[]", _CP4),
        fb("int32_t[]", _CP6),
        seed & 0xFFFF,
        fb("char[]", out.view(np.uint8)),
    )
    ports = _CID_PORTS[proto]  # the rest (no ports) in Python, as `community_id`
    for i in np.flatnonzero(~ports).tolist():
        out[i] = community_id(
            o[i].tobytes(), r[i].tobytes(), int(proto[i]), int(op[i]), int(rp[i]), seed
        ).encode("ascii")
    return out

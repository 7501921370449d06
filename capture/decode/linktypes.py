"""Link layers, vectorised: where does each frame's IP header start?

`link_layer(...)` takes the frames of a batch (offsets into one buffer) and, per link type,
computes the offset of the network-layer header, the IP version the link layer announces
(0 = "look at the version nibble"), and the outer VLAN id, using numpy over all frames of
that link type at once. Handled: Ethernet with 802.1Q, 802.1ad/QinQ (any stacking up to 4
tags), VN-Tag (`capture.decode.vntag`), MPLS label stacks, PPPoE session; Linux SLL and SLL2; BSD
NULL/LOOP in either byte order; raw IPv4/IPv6 (LINKTYPE_RAW 101, IPV4 228, IPV6 229, DLT
12/14). NFLOG's TLVs are walked per packet in Python (rare link type). Frames that carry no
IP get a status code.

All gathers are bounds-checked against the frame end: nothing here reads outside a frame.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from capture.batch import (
    DLT_RAW_12,
    DLT_RAW_14,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NFLOG,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    STATUS,
)
from capture.decode import vntag

I64 = npt.NDArray[np.int64]
U8A = npt.NDArray[np.uint8]
I32 = npt.NDArray[np.int32]

ST_NON_IP = STATUS["non_ip"]
ST_TRUNC = STATUS["truncated"]
ST_UNSUP = STATUS["unsupported_linktype"]
ST_BADLINK = STATUS["bad_link_header"]

ETH_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_MPLS = (0x8847, 0x8848)
ETH_IPV4, ETH_IPV6, ETH_PPPOE = 0x0800, 0x86DD, 0x8864
AF_INET6_VALUES = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin

SUPPORTED = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_NFLOG,
        LINKTYPE_LINUX_SLL2,
        DLT_RAW_12,
        DLT_RAW_14,
    }
)


def be16(buf: U8A, off: I64) -> I64:
    """Big-endian u16 at each offset (offsets must be valid)."""
    return (buf[off].astype(np.int64) << 8) | buf[off + 1]


def be32(buf: U8A, off: I64) -> I64:
    """Big-endian u32 at each offset (offsets must be valid)."""
    return (
        (buf[off].astype(np.int64) << 24)
        | (buf[off + 1].astype(np.int64) << 16)
        | (buf[off + 2].astype(np.int64) << 8)
        | buf[off + 3]
    )


def _ethertype_to_hint(et: I64) -> npt.NDArray[np.uint8]:
    hint = np.zeros(et.shape[0], dtype=np.uint8)
    hint[et == ETH_IPV4] = 4
    hint[et == ETH_IPV6] = 6
    return hint


def ethernet(
    buf: U8A, start: I64, end: I64
) -> tuple[I64, npt.NDArray[np.uint8], I32, I32, npt.NDArray[np.uint8]]:
    """Ethernet frames -> (l3 offset or -1, ip version hint, outer vlan or -1, inner vlan
    (QinQ) or -1, status)."""
    n = start.shape[0]
    status = np.zeros(n, dtype=np.uint8)
    vlan = np.full(n, -1, dtype=np.int32)
    inner = np.full(n, -1, dtype=np.int32)
    ok = start + 14 <= end
    status[~ok] = ST_TRUNC
    o = np.where(ok, start + 12, 0)
    et = np.where(ok, be16(buf, o), -1)
    off = start + 14
    for _ in range(4):  # VLAN tags: 802.1Q, 802.1ad, old QinQ ethertypes (and VN-Tag)
        et, off = vntag.skip(buf, et, off, end, status)
        m = np.isin(et, ETH_VLAN)
        if not m.any():
            break
        short = m & (off + 4 > end)
        status[short] = ST_TRUNC
        et[short] = -1
        m &= ~short
        safe = np.where(m, off, 0)
        tci = be16(buf, safe) & 0xFFF
        first = m & (vlan < 0)
        second = m & ~first & (inner < 0)
        vlan[first] = tci[first].astype(np.int32)
        inner[second] = tci[second].astype(np.int32)
        et = np.where(m, be16(buf, safe + 2), et)
        off = np.where(m, off + 4, off)
    et, off = vntag.skip(buf, et, off, end, status)  # a VN-Tag after the last VLAN tag
    pppoe = et == ETH_PPPOE
    if pppoe.any():
        short = pppoe & (off + 8 > end)
        status[short] = ST_TRUNC
        m = pppoe & ~short
        safe = np.where(m, off, 0)
        proto = be16(buf, safe + 6)
        et = np.where(
            m, np.where(proto == 0x21, ETH_IPV4, np.where(proto == 0x57, ETH_IPV6, -1)), et
        )
        et[short] = -1
        off = np.where(m, off + 8, off)
    mpls = np.isin(et, ETH_MPLS)
    if mpls.any():
        active = mpls.copy()
        for _ in range(16):  # label stack entries until bottom-of-stack
            if not active.any():
                break
            short = active & (off + 4 > end)
            status[short] = ST_TRUNC
            et[short] = -1
            active &= ~short
            safe = np.where(active, off, 0)
            bos = (buf[safe + 2] & 1).astype(bool) & active
            off = np.where(active, off + 4, off)
            active &= ~bos
            # after the bottom label: guess the payload from the version nibble
            if bos.any():
                has = bos & (off < end)
                nib = buf[np.where(has, off, 0)] >> 4
                guess = np.where(nib == 4, ETH_IPV4, np.where(nib == 6, ETH_IPV6, -1))
                et = np.where(bos, np.where(has, guess, -1), et)
                status[bos & ~has] = ST_TRUNC
        et[active] = -1  # stack too deep
        status[active] = ST_BADLINK
    hint = _ethertype_to_hint(et)
    ip = hint > 0
    status[~ip & (status == 0)] = ST_NON_IP
    l3 = np.where(ip, off, -1)
    return l3, hint, vlan, inner, status


def sll(
    buf: U8A, start: I64, end: I64, v2: bool
) -> tuple[I64, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Linux cooked capture v1 (16-byte header) or v2 (20-byte header)."""
    hdr, proto_at = (20, 0) if v2 else (16, 14)
    status = np.zeros(start.shape[0], dtype=np.uint8)
    ok = start + hdr <= end
    status[~ok] = ST_TRUNC
    et = np.where(ok, be16(buf, np.where(ok, start + proto_at, 0)), -1)
    hint = _ethertype_to_hint(et)
    status[ok & (hint == 0)] = ST_NON_IP
    return np.where(hint > 0, start + hdr, -1), hint, status


def null_loop(
    buf: U8A, start: I64, end: I64, network_order: bool
) -> tuple[I64, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """BSD loopback: 4-byte address family, host byte order (NULL) or network order (LOOP)."""
    status = np.zeros(start.shape[0], dtype=np.uint8)
    ok = start + 4 <= end
    status[~ok] = ST_TRUNC
    s = np.where(ok, start, 0)
    b0 = buf[s].astype(np.int64)
    b3 = buf[s + 3].astype(np.int64)
    # host order unknown: a small AF value sits in byte 0 (little endian) or byte 3 (big)
    af = b3 if network_order else np.where(b0 != 0, b0, b3)
    hint = np.zeros(start.shape[0], dtype=np.uint8)
    hint[af == 2] = 4
    hint[np.isin(af, AF_INET6_VALUES)] = 6
    hint[~ok] = 0
    status[ok & (hint == 0)] = ST_NON_IP
    return np.where(hint > 0, start + 4, -1), hint, status


def nflog_one(frame: bytes) -> tuple[int, int, int]:
    """One NFLOG frame -> (payload offset or -1, version hint, status)."""
    if len(frame) < 4:
        return -1, 0, ST_TRUNC
    family = frame[0]
    pos = 4
    while pos + 4 <= len(frame):
        tlen, ttype = struct.unpack_from("<HH", frame, pos)  # host order; Linux is LE
        if tlen < 4:
            return -1, 0, ST_BADLINK
        if ttype == 9:  # NFULA_PAYLOAD
            if pos + tlen > len(frame):
                return -1, 0, ST_TRUNC
            hint = 4 if family == 2 else 6 if family == 10 else 0
            return pos + 4, hint, 0
        pos += (tlen + 3) & ~3
    return -1, 0, ST_NON_IP if pos == len(frame) else ST_TRUNC


def link_layer(
    buf: U8A, linktype: npt.NDArray[np.uint16], start: I64, end: I64
) -> tuple[I64, npt.NDArray[np.uint8], I32, I32, npt.NDArray[np.uint8]]:
    """Whole batch -> (l3 offset or -1, version hint, outer vlan, inner vlan, status) per
    frame (vlans -1 where there is no 802.1Q tag)."""
    n = start.shape[0]
    l3 = np.full(n, -1, dtype=np.int64)
    hint = np.zeros(n, dtype=np.uint8)
    vlan = np.full(n, -1, dtype=np.int32)
    inner = np.full(n, -1, dtype=np.int32)
    status = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return l3, hint, vlan, inner, status
    first = int(linktype[0])
    uniq = [first] if bool((linktype == first).all()) else [int(x) for x in np.unique(linktype)]
    for lt in uniq:
        sel: slice | npt.NDArray[np.intp] = (
            slice(None) if len(uniq) == 1 else np.nonzero(linktype == lt)[0]
        )
        s, e = start[sel], end[sel]
        if lt == LINKTYPE_ETHERNET:
            a, h, v, iv, st = ethernet(buf, s, e)
            vlan[sel] = v
            inner[sel] = iv
        elif lt in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
            a, h, st = sll(buf, s, e, lt == LINKTYPE_LINUX_SLL2)
        elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
            a, h, st = null_loop(buf, s, e, lt == LINKTYPE_LOOP)
        elif lt in (LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6):
            a = s.copy()
            h = np.full(
                s.shape[0],
                4 if lt == LINKTYPE_IPV4 else 6 if lt == LINKTYPE_IPV6 else 0,
                dtype=np.uint8,
            )
            st = np.zeros(s.shape[0], dtype=np.uint8)
        elif lt == LINKTYPE_NFLOG:
            a = np.full(s.shape[0], -1, dtype=np.int64)
            h = np.zeros(s.shape[0], dtype=np.uint8)
            st = np.zeros(s.shape[0], dtype=np.uint8)
            for k in range(s.shape[0]):
                o0, o1 = int(s[k]), int(e[k])
                off, hk, sk = nflog_one(buf[o0:o1].tobytes())
                a[k] = o0 + off if off >= 0 else -1
                h[k], st[k] = hk, sk
        else:
            a = np.full(s.shape[0], -1, dtype=np.int64)
            h = np.zeros(s.shape[0], dtype=np.uint8)
            st = np.full(s.shape[0], ST_UNSUP, dtype=np.uint8)
        l3[sel], hint[sel], status[sel] = a, h, st
    return l3, hint, vlan, inner, status

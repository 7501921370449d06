"""Membership of 16-byte (IPv4-mapped) addresses in a set of networks, vectorised.

The capture path asks "is this flow's endpoint internal?" for every new flow; with numpy
that is a masked compare per network over the whole batch of addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt


class NetSet:
    """Networks given as text (`10.0.0.0/8`, `fc00::/7`)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        nets, masks = [], []
        for net in self.networks:
            if net.version == 4:
                base = b"\x00" * 10 + b"\xff\xff" + net.network_address.packed
                plen = 96 + net.prefixlen
            else:
                base, plen = net.network_address.packed, net.prefixlen
            mask = (((1 << plen) - 1) << (128 - plen)).to_bytes(16, "big")
            nets.append(np.frombuffer(base, np.uint8))
            masks.append(np.frombuffer(mask, np.uint8))
        self._nets = np.array(nets, np.uint8).reshape(-1, 16)
        self._masks = np.array(masks, np.uint8).reshape(-1, 16)
        # the same as two big-endian 64-bit halves: two compares a network, not sixteen
        self._nets64 = self._nets.view(">u8").astype(np.uint64)
        self._masks64 = self._masks.view(">u8").astype(np.uint64)

    def contains(self, addrs: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        """(k, 16) uint8 addresses -> (k,) bool."""
        a = np.ascontiguousarray(addrs, np.uint8).reshape(-1, 16).view(">u8")
        hi, lo = a[:, 0].astype(np.uint64), a[:, 1].astype(np.uint64)
        out = np.zeros(a.shape[0], bool)
        for net, mask in zip(self._nets64.tolist(), self._masks64.tolist(), strict=True):
            m0, m1 = np.uint64(mask[0]), np.uint64(mask[1])
            out |= ((hi & m0) == np.uint64(net[0])) & ((lo & m1) == np.uint64(net[1]))
        return out

    def contains_text(self, ips: Sequence[str]) -> list[bool]:
        out = []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                out.append(False)
                continue
            out.append(any(addr in n for n in self.networks if n.version == addr.version))
        return out

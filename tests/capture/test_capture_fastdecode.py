"""The C pass for the common case (`capture.read.walk.decode_common`) gives every packet exactly
the columns the numpy path gives it: differential tests over every corpus capture and over
frames mutated at random (truncations, flipped header bytes, tunnel look-alikes), and the
packets it leaves to numpy really are the rare cases."""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import fields

import dpkt
import numpy as np
import pytest
from lbm_testing import REPO, corpus_root

from capture import CaptureError
from capture import batch as batch_mod
from capture.batch import PacketBatch, RawBatch
from capture.decode import Decoder
from capture.read import walk as fastpath
from capture.read.reader import open_capture

pytestmark = pytest.mark.skipif(fastpath.IMPLEMENTATION != "c", reason="no C extension")

CAPTURES = sorted([*(corpus_root() / "pcaps").rglob("*.pcap*"), *(REPO / "pcaps").glob("*.pcap*")])


@pytest.fixture(autouse=True)
def poisoned_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The columns the C-pass decoder does not zero first (`PacketBatch.empty_for(filled=
    False)`) start as 0xA5 bytes here, not as whatever `np.empty` returns (often zeros), so a
    value the C pass or `reset_rows` failed to write differs from the numpy path's."""

    def poison(shape: int | tuple[int, int], dtype: object) -> np.ndarray:
        a = np.empty(shape, dtype)  # type: ignore[call-overload]
        a.reshape(-1).view(np.uint8)[:] = 0xA5
        return a

    monkeypatch.setattr(batch_mod, "_unset", poison)


def _same(a: PacketBatch, b: PacketBatch, where: str) -> None:
    for f in fields(PacketBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "middle":
            assert (x is None) == (y is None), where
            if x is not None:
                for g in fields(x):
                    assert np.array_equal(getattr(x, g.name), getattr(y, g.name)), where
        elif f.name != "buf":
            bad = np.nonzero(np.asarray(x != y).reshape(len(a), -1).any(axis=1))[0]
            assert bad.size == 0, f"{where}: {f.name} differs at packets {bad[:5].tolist()}"


def _both(raws: list[RawBatch], where: str) -> int:
    """Decode with and without the C pass; returns how many packets took the C pass."""
    fast, slow = Decoder(), Decoder()
    slow.fast = False
    n_fast = 0
    for i, raw in enumerate(raws):
        a, b = fast.decode(raw), slow.decode(raw)
        _same(a, b, f"{where} batch {i}")
        out = PacketBatch.empty_for(raw)
        left = fastpath.decode_common(raw.buf, raw.buf.shape[0], raw, out)
        assert left is not None
        n_fast += len(raw) - left.shape[0]
    assert fast.summary == slow.summary, where
    return n_fast


@pytest.mark.skipif(not CAPTURES, reason="no corpus captures (set LBM_CORPUS)")
def test_every_corpus_capture_decodes_the_same_with_the_c_pass() -> None:
    n_fast = 0
    for path in CAPTURES:
        try:
            raws = list(open_capture(path).batches(4096))
        except CaptureError:
            continue  # a broken header: nothing to decode
        n_fast += _both(raws, path.name)
    assert n_fast > 10_000  # the corpus's TCP/UDP mostly takes the C pass


def _eth(payload: bytes, ethertype: int = 0x0800, tags: tuple[int, ...] = ()) -> bytes:
    head = b"\x02" * 6 + b"\x04" * 6
    for t in tags:
        head += struct.pack(">HH", 0x8100, t)
    return head + struct.pack(">H", ethertype) + payload


def _v4(proto: int, l4: bytes, mf: bool = False) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("192.0.2.9"), p=proto)
    ip.data = l4
    ip.mf = int(mf)
    ip.len = 20 + len(l4)
    return bytes(ip)


def _v6(nh: int, l4: bytes, src: str = "2001:db8::1") -> bytes:
    ip = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, src),
        dst=socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
        nxt=nh,
        hlim=64,
    )
    ip.data = l4
    ip.plen = len(l4)
    return bytes(ip)


def _tcp(payload: bytes = b"") -> bytes:
    return bytes(dpkt.tcp.TCP(sport=40000, dport=443, seq=7, ack=9, flags=0x18, data=payload))


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return bytes(dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload))


def _seeds() -> list[tuple[bytes, int]]:
    """(frame, link type) covering what the C pass takes and what it must leave alone."""
    teredo_inner = _v6(17, _udp(1, 2, b"x" * 8), src="2001:0:4136:e378::1")  # 2001::/32
    eth = [
        _eth(_v4(6, _tcp(b"GET / HTTP/1.1\r\n"))),
        _eth(_v4(6, _tcp()), tags=(7,)),
        _eth(_v4(17, _udp(5353, 53, b"\x12\x34" + b"\x00" * 30)), tags=(7, 8)),
        _eth(_v4(17, _udp(5353, 53, b"\x12\x34")), tags=(7, 8, 9)),
        _eth(_v4(1, b"\x08\x00\x00\x00\x00\x01\x00\x01abc")),
        _eth(_v4(132, b"\x00\x01\x00\x02" + b"\x00" * 12)),
        _eth(_v4(99, b"whatever")),
        _eth(_v4(6, _tcp(b"x" * 30), mf=True)),  # a first fragment
        _eth(_v4(47, b"\x00\x00\x08\x00" + _v4(6, _tcp()))),  # GRE
        _eth(_v4(4, _v4(6, _tcp()))),  # IP in IP
        _eth(_v4(17, _udp(1234, 4789, b"\x08" + b"\x00" * 7 + _eth(_v4(6, _tcp()))))),
        _eth(_v4(17, _udp(1234, 6081, b"\x00\x00\x65\x58" + b"\x00" * 4 + _eth(b"")))),
        _eth(_v4(17, _udp(1234, 3544, teredo_inner))),
        _eth(_v4(17, _udp(1234, 9999, b"\x00" * 40))),  # Teredo look-alike, not one
        _eth(_v4(17, _udp(1234, 9999, teredo_inner))),  # Teredo by its address
        _eth(_v6(6, _tcp(b"hello")), 0x86DD),
        _eth(_v6(58, b"\x80\x00\x00\x00\x00\x01\x00\x01"), 0x86DD),
        _eth(_v6(0, b"\x06\x00" + b"\x00" * 6 + _tcp()), 0x86DD),  # hop-by-hop
        _eth(_v6(44, b"\x06\x00\x00\x01" + b"\x00" * 4 + _tcp()), 0x86DD),  # fragment
        _eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, 0x0806),  # ARP
        _eth(b"\x00\x00\x00\x00\x08\x00" + _v4(6, _tcp()), 0x8926),  # VN-Tag
        _eth(b"\x00\x01\x01\xff" + _v4(6, _tcp()), 0x8847),  # MPLS
    ]
    raw = [_v4(6, _tcp()), _v6(17, _udp(53, 53, b"\x00" * 12))]
    return [(f, 1) for f in eth] + [(f, 101) for f in raw] + [(_v4(6, _tcp()), 113)]


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.3 and len(b) > 1:
            del b[rng.randrange(1, len(b)) :]  # truncate
        elif op < 0.9 and b:
            b[rng.randrange(min(len(b), 80))] = rng.choice((0, 0xFF, rng.randrange(256)))
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))  # trailer
    return bytes(b)


def test_mutated_frames_decode_the_same_with_the_c_pass() -> None:
    rng = random.Random(18)
    seeds = _seeds()
    raws = []
    for _ in range(6):
        frames, lts = [], []
        for _ in range(3000):
            f, lt = rng.choice(seeds)
            frames.append(_mutate(rng, f) if rng.random() < 0.8 else f)
            lts.append(lt)
        raws.append(RawBatch.from_frames(frames, np.arange(len(frames)) * 1000, lts))
    assert _both(raws, "mutated") > 1000


def test_only_the_common_case_takes_the_c_pass() -> None:
    seeds = _seeds()
    raw = RawBatch.from_frames([f for f, _ in seeds], np.zeros(len(seeds)), [t for _, t in seeds])
    out = PacketBatch.empty_for(raw)
    left = fastpath.decode_common(raw.buf, raw.buf.shape[0], raw, out)
    assert left is not None
    fast = sorted(set(range(len(seeds))) - set(left.tolist()))
    # TCP, 1 and 2 tags, ICMP, SCTP, another protocol, the Teredo look-alike, IPv6 TCP/ICMPv6,
    # raw IPv4 and IPv6; not: 3 tags, fragments, GRE, IP in IP, VXLAN, Geneve, Teredo (by port
    # or by its address), extension headers, ARP, VN-Tag, MPLS, Linux SLL
    assert fast == [0, 1, 2, 4, 5, 6, 13, 15, 16, 22, 23]
    _both([raw], "seeds")


def test_records_outside_the_buffer_are_left_to_numpy() -> None:
    """A record whose offset or length runs outside the buffer is never read by C."""
    frame = _eth(_v4(6, _tcp()))
    raw = RawBatch.from_frames([frame, frame, frame], np.zeros(3))
    raw.frame_off = np.array([0, -4, len(frame) * 2], np.int64)
    raw.cap_len = np.array([len(frame), len(frame), len(frame) + 1], np.int32)
    out = PacketBatch.empty_for(raw)
    left = fastpath.decode_common(raw.buf, raw.buf.shape[0], raw, out)
    assert left is not None and left.tolist() == [1, 2]
    _both([raw], "outside")


def test_a_column_of_the_wrong_type_is_refused_before_c_writes() -> None:
    raw = RawBatch.from_frames([_eth(_v4(6, _tcp()))], np.zeros(1))
    out = PacketBatch.empty_for(raw)
    out.sport = np.zeros(1, np.uint8)  # one byte where C writes two
    with pytest.raises(ValueError, match="sport"):
        fastpath.decode_common(raw.buf, raw.buf.shape[0], raw, out)

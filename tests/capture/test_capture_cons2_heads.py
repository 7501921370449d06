"""The fast path's per-slot texts (`capture.app.feed.head_texts`, one gather per batch) give
exactly what the per-head decode they replace gave (`bytes.decode("ascii", "replace")
.lower()`, None if empty), on hostile bytes too: outside ASCII, NUL (numpy's fixed-width
strings would drop a trailing one), upper case, empty and long names, overlapping slices.
The flow rows these feed are pinned by the golden rows and the Zeek agreement."""

from __future__ import annotations

import numpy as np

from capture.app.feed import head_texts


def _reference(buf: np.ndarray, off: list[int], ln: list[int]) -> list[str | None]:
    return [buf[o : o + k].tobytes().decode("ascii", "replace").lower() or None
            for o, k in zip(off, ln, strict=True)]  # fmt: skip


def test_ascii_heads_match_the_per_head_decode() -> None:
    rng = np.random.default_rng(7)
    text = b"Www.Example.COM-a_b.1234567890" * 200
    buf = np.frombuffer(text, np.uint8)
    off = rng.integers(0, buf.size - 300, 500)
    ln = rng.integers(0, 260, 500)
    ln[::7] = 0  # no SNI: None
    got = head_texts(buf, off.astype(np.int64), ln.astype(np.int64))
    assert got.tolist() == _reference(buf, off.tolist(), ln.tolist())
    assert got[0] is None and got[1] == _reference(buf, [int(off[1])], [int(ln[1])])[0]


def test_bytes_outside_ascii_or_nul_take_the_exact_path() -> None:
    for bad in (b"\xff", b"\x00", b"\xc3\xa9", b"\x80"):
        raw = b"Host.EXAMPLE" + bad + b"Tail" + bad
        buf = np.frombuffer(raw + b"OTHER.org", np.uint8)
        off = np.asarray([0, 0, len(raw), 3], np.int64)
        ln = np.asarray([len(raw), 12, 9, 0], np.int64)
        got = head_texts(buf, off, ln).tolist()
        assert got == _reference(buf, off.tolist(), ln.tolist())
        assert got[0] is not None and got[0].startswith("host.example")
        assert got[3] is None


def test_empty_input_and_all_empty() -> None:
    buf = np.frombuffer(b"abc", np.uint8)
    assert head_texts(buf, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    got = head_texts(buf, np.asarray([0, 1], np.int64), np.asarray([0, 0], np.int64))
    assert got.tolist() == [None, None]

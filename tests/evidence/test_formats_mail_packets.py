"""Mail and packets export formats, from records the real writers made: the relay's
`archive_copies` (message + envelope records, real corpus emails) and the capture's
`PcapngRecord` (frames of the project's captures), through a real `Archive`, decrypted, fed to
`ExportSet`. Checked with Python's `email` parser and `mailbox.mbox`, and with `tshark -r`.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import mailbox
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lbm_testing import corpus_root

from appliance.evidence.formats import ExportSet, FormatError, WrittenFile
from appliance.mail.archiving import archive_copies, envelope_record
from appliance.mail.envelope import Envelope
from capture.subjects.pcapng import PcapngRecord
from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths
from store.segment import PlainStream, iter_events

REPO = Path(__file__).resolve().parents[2]
MAIL_REF, PACKETS_REF = "ca1-formats-mail", "ca1-formats-packets"
AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
Events = list[tuple[str, Any]]


def _emails() -> list[Path]:
    root = corpus_root() / "emails" / "dev"
    if not root.is_dir():
        pytest.skip(f"test corpus not found at {root} (set LBM_CORPUS to ../shared/corpus)")
    return sorted(root.glob("*.eml"))


class Env:
    def __init__(self, data: Path) -> None:
        self.paths = DataPaths(data)
        key = signing.create(self.paths, "formats-test")  # in-process: no `lbm init` needed
        audit = AuditLog(self.paths, key, Clock(), witness=False)
        self.archive = Archive(self.paths, key, Clock(), audit=audit)
        secret, public = age.generate()
        self.identity = age.identity_file_text(secret)
        for ref in (MAIL_REF, PACKETS_REF):
            KeyStore(self.paths).create_authorisation_key(ref, [public])

    def records(self, ref: str) -> list[Events]:
        """REF's records as `lbm evidence open` reads them: each a list of framing events."""
        ks = KeyStore(self.paths)
        auth = ks.unwrap_authorisation(ref, self.identity)
        out: list[Events] = []
        for seg in sorted((self.paths.archive / ref).glob("[0-9]*.age")):
            key = ks.unwrap_segment(ref, int(seg.name.split(".")[0]), auth)
            with seg.open("rb") as fh:
                for kind, value in iter_events(PlainStream(age.AgeReader(fh, [key]).chunks())):
                    if kind == "header":
                        out.append([])
                    out[-1].append((kind, value))
        return out


def feed(records: list[Events], out: Path) -> tuple[ExportSet, list[WrittenFile]]:
    export = ExportSet(out)
    for record in records:
        for kind, value in record:
            if kind == "header":
                export.begin(value)
            elif kind == "data":
                export.data(value)
            else:
                export.end(kind == "end" and not value.get("aborted"))
    return export, export.close()


def _frames(name: str) -> Iterator[tuple[int, bytes]]:
    with (REPO / "pcaps" / name).open("rb") as fh:
        for ts, frame in dpkt.pcap.Reader(fh):
            yield round(ts * 1e9), frame


def _sections(path: Path) -> list[bytes]:
    """A pcapng file split at its Section Header Blocks (each a whole pcapng stream)."""
    blob, out, pos, order = path.read_bytes(), [], 0, "<"
    while pos < len(blob):
        if blob[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if blob[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            out.append(b"")
        (total,) = struct.unpack_from(order + "I", blob, pos + 4)
        out[-1] += blob[pos : pos + total]
        pos += total
    return out


def _tshark(path: Path) -> list[tuple[str, ...]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    run = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len",
         "-e", "frame.cap_len", "-e", "frame.protocols", "-e", "frame.interface_id"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [tuple(line.split("\t")) for line in run.stdout.splitlines()]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    data = tmp_path_factory.mktemp("formats") / "data"
    env = Env(data)
    for i, path in enumerate(_emails()):
        payload = path.read_bytes()
        sender = "" if i == 1 else f"officer{i}@force.example"  # one null sender (a DSN)
        envelope = Envelope(id=f"spool{i}", mail_from=sender, rcpts=["x@example.org"],
                            received=AT.timestamp(), size=len(payload), client_ip="10.0.0.5",
                            direction="outbound")  # fmt: skip
        blob = envelope_record(envelope, b"Received: from x\r\n", AT)
        result = archive_copies(env.archive, [(MAIL_REF, "p12345")], payload, blob, AT)
        assert result.refs == [MAIL_REF], result.failed
    for linktype, source in ((1, "tls-split-hello.pcap"), (1, "vxlan.pcap"), (101, None)):
        sink = env.archive.open_record(PACKETS_REF, "packets", "p12345", AT, "pcapng")
        record = PcapngRecord(sink.write)
        frames = _frames(source) if source else ((n, _raw(n)) for n in range(3))
        for ts_ns, frame in frames:
            record.packet(linktype, ts_ns, frame, len(frame))
        sink.close()
    env.archive.close()
    return env


def _raw(n: int) -> bytes:
    """An IPv4/UDP datagram for link type 101 (raw IP)."""
    udp = dpkt.udp.UDP(sport=4000 + n, dport=53, data=b"q%d" % n)
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x05", dst=b"\x0a\x00\x00\x35", p=17, data=udp)
    return bytes(ip)


# -- mail -----------------------------------------------------------------------------------


def test_every_eml_is_the_archived_message_byte_for_byte(env: Env, tmp_path: Path) -> None:
    export, files = feed(env.records(MAIL_REF), tmp_path / "out")
    emails = _emails()
    emls = sorted((f for f in files if f.path.endswith(".eml")), key=lambda f: f.record_ids[0])
    assert len(emls) == len(emails) and export.incomplete == []
    by_id = {f.record_ids[0]: f for f in emls}
    messages = [r[0][1]["id"] for r in env.records(MAIL_REF) if r[0][1]["kind"] == "message"]
    for path, record_id in zip(emails, messages, strict=True):
        written = by_id[record_id]
        blob = (tmp_path / "out" / written.path).read_bytes()
        assert blob == path.read_bytes(), path.name
        assert (hashlib.sha256(blob).hexdigest(), len(blob)) == (written.sha256, written.size)
        parsed = email.message_from_bytes(blob, policy=email.policy.default)
        original = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert parsed.keys() == original.keys(), path.name
        assert stat.S_IMODE((tmp_path / "out" / written.path).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "mail").stat().st_mode) == 0o700


def test_mbox_opens_with_the_same_messages_and_envelope_senders(env: Env, tmp_path: Path) -> None:
    records = env.records(MAIL_REF)
    # concurrent mail: the second message's records come between the first's message and envelope
    records[1], records[2] = records[2], records[1]
    _, files = feed(records, tmp_path / "out")
    box = mailbox.mbox(str(tmp_path / "out" / "mail" / "mail.mbox"), create=False)
    emails = _emails()
    assert len(box) == len(emails)
    mbox_file = next(f for f in files if f.path == "mail/mail.mbox")
    assert len(mbox_file.record_ids) == len(emails)
    froms = [box.get_message(k).get_from() for k in box.keys()]  # noqa: SIM118 (order)
    senders = [f.split(" ")[0] for f in froms]
    assert senders[0] == "officer0@force.example" and senders[1] == "MAILER-DAEMON"
    assert senders[2:] == [f"officer{i}@force.example" for i in range(2, len(emails))]
    assert all(f.endswith(" Sun Mar  1 09:00:00 2026") for f in froms)  # envelope's `received`
    for key, path in zip(box.keys(), emails, strict=True):
        original = path.read_bytes()
        expected = original.replace(b"\nFrom ", b"\n>From ")
        if expected.startswith(b"From "):
            expected = b">" + expected
        got = box.get_bytes(key)
        assert got.rstrip(b"\n") == expected.rstrip(b"\n"), path.name
        parsed = email.message_from_bytes(got, policy=email.policy.default)
        if not original.startswith(b"From "):
            assert parsed["Message-ID"] == email.message_from_bytes(original)["Message-ID"]


# -- packets --------------------------------------------------------------------------------


def test_pcapng_merges_records_and_tshark_finds_the_same_packets(env: Env, tmp_path: Path) -> None:
    records = env.records(PACKETS_REF)
    export, files = feed(records, tmp_path / "out")
    assert [f.path for f in files] == ["packets/packets.pcapng"] and export.incomplete == []
    assert files[0].record_ids == [r[0][1]["id"] for r in records]
    got = _tshark(tmp_path / "out" / "packets" / "packets.pcapng")
    sections = tmp_path / "records.pcapng"  # the records one after the other: one section each
    sections.write_bytes(b"".join(v for record in records for k, v in record if k == "data"))
    want = _tshark(sections)
    assert [w[:4] for w in want] == [g[:4] for g in got] and len(got) == 54 + 8 + 3
    # one interface per distinct IDB: both Ethernet records share one, raw IP has its own
    assert {g[4] for g in got} == {"0", "1"} and got[-1][4] == "1"
    assert got[-1][3] == "raw:ip:udp"


def test_foreign_blocks_and_a_big_endian_section(env: Env, tmp_path: Path) -> None:
    """The project's mixed capture: SPB, obsolete PB, NRB, custom and ISB blocks in a
    little-endian section, four link types, then a big-endian section."""
    little, big = _sections(REPO / "pcaps" / "mixed-linktypes.pcapng")
    ours = env.records(PACKETS_REF)[0]
    header = {"channel": "packets", "kind": "pcapng", "ts": "2026-03-01T09:00:00Z"}
    records = [ours] + [
        [("header", header | {"id": f"X/000001/{n}"}), ("data", blob), ("end", {"length": 0})]
        for n, blob in ((1, little), (2, big))
    ]
    export, files = feed(records, tmp_path / "out")
    assert [f.path for f in files] == ["packets/X_000001_2.pcapng", "packets/packets.pcapng"]
    assert (tmp_path / "out" / files[0].path).read_bytes() == big
    assert files[0].record_ids == ["X/000001/2"]
    assert files[1].record_ids == [ours[0][1]["id"], "X/000001/1"]
    (tmp_path / "little.pcapng").write_bytes(little)
    want = _tshark(tmp_path / "little.pcapng")
    got = _tshark(tmp_path / "out" / "packets" / "packets.pcapng")[54:]
    assert [w[1:4] for w in want] == [g[1:4] for g in got]
    spb = [i for i, w in enumerate(want) if w[0] == "" and "udp" in w[3]]
    assert [w[0] for i, w in enumerate(want) if i not in spb] == [
        g[0] for i, g in enumerate(got) if i not in spb
    ]
    assert len(_tshark(tmp_path / "out" / files[0].path)) == 2
    assert export.incomplete == []


def test_a_cut_off_record_keeps_its_whole_blocks(env: Env, tmp_path: Path) -> None:
    first, second = env.records(PACKETS_REF)[:2]
    blob = b"".join(v for k, v in second if k == "data")
    cut = [second[0], ("data", blob[: len(blob) // 2]), ("cut", second[0][1])]
    export, files = feed([first, cut], tmp_path / "out")
    assert export.incomplete == [second[0][1]["id"]]
    got = _tshark(tmp_path / "out" / files[0].path)
    alone = tmp_path / "whole.pcapng"
    alone.write_bytes(blob)
    whole = _tshark(alone)
    assert 54 < len(got) < 54 + len(whole)  # the packets before the cut, none broken

    garbage = [("header", second[0][1]), ("data", b"not pcapng at all"), ("end", {"length": 17})]
    export, _ = feed([first, garbage], tmp_path / "out2")
    assert export.incomplete == [second[0][1]["id"]]  # damaged, named, the rest intact
    assert len(_tshark(tmp_path / "out2" / "packets" / "packets.pcapng")) == 54


# -- the interface ---------------------------------------------------------------------------


def test_unknown_channels_are_kept_raw_and_misuse_is_refused(env: Env, tmp_path: Path) -> None:
    header = {"id": "R-1/000001/1", "channel": "fax", "kind": "page", "ts": "2026-03-01T09:00:00Z"}
    export = ExportSet(tmp_path / "out")
    with pytest.raises(FormatError, match="outside a record"):
        export.data(b"x")
    export.begin(header)
    with pytest.raises(FormatError, match="R-1/000001/1: begin before its end"):
        export.begin(header)
    export.data(b"\x00page")
    export.end(True)
    for bad in ("../../etc/passwd", "..", ""):  # ids come from authenticated segments, but a
        with pytest.raises(FormatError):  # file name still never leaves the output directory
            export.begin(header | {"id": bad})
    assert [f.path for f in export.close()] == ["other/R-1_000001_1.bin"]
    assert (tmp_path / "out/other/R-1_000001_1.bin").read_bytes() == b"\x00page"
    with pytest.raises(FormatError, match="exists already"):  # never overwrites an export
        again = ExportSet(tmp_path / "out")
        again.begin(header)


def test_an_unfinished_record_at_close_is_listed_incomplete(env: Env, tmp_path: Path) -> None:
    message = env.records(MAIL_REF)[0]
    export = ExportSet(tmp_path / "out")
    export.begin(message[0][1])
    export.data(message[1][1][:100])
    files = export.close()  # the segment ended inside the record
    assert export.incomplete == [message[0][1]["id"]]
    eml = next(f for f in files if f.path.endswith(".eml"))
    assert (eml.size, (tmp_path / "out" / eml.path).read_bytes()) == (100, message[1][1][:100])


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"From x", b"From", b">From y", b"aFrom b", b"", b"F"]),
                   max_size=12),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
    piece=st.integers(min_value=1, max_value=9),
    final_newline=st.booleans(),
)  # fmt: skip
def test_mbox_escaping_is_the_same_whatever_the_piece_size(
    lines: list[bytes], endings: list[bytes], piece: int, final_newline: bool
) -> None:
    """Escaping streams in pieces; at every piece size it equals escaping line by line."""
    import io

    from appliance.evidence.formats import mail

    message = b"".join(line + end for line, end in zip(lines, endings, strict=False))
    if not final_newline:
        message += b"From tail"
    expected = b"".join(
        b">" + line if line.startswith(b"From ") else line
        for line in message.splitlines(keepends=True)
    )
    sink = io.BytesIO()
    original, mail.PIECE = mail.PIECE, piece
    try:
        last = mail._copy_escaped(io.BytesIO(message), sink.write)
    finally:
        mail.PIECE = original
    assert sink.getvalue() == expected
    assert last == (expected[-1:] or b"\n")

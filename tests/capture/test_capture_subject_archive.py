"""A subject's packets land in their authorisation's archive, readable by tshark once an
investigator decrypts them; a non-subject's canary payload is nowhere under the data dir.

Everything real: `lbm init`, `lbm identity import`, `lbm keys investigator add`, `lbm auth
grant` under the fake clock (set before the capture's own timestamps, since replay decides on
them), `lbm capture replay`, the archive's key chain, and tshark on the decrypted records.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt
import pyarrow.parquet as pq
import pytest
from lbm_testing import Lbm, grant_argv

from store import agefile as age
from store.keys import KeyStore
from store.metadata import read_stream
from store.paths import DataPaths
from store.segment import PlainStream, read_records

REF = "ca1-2026-0042"
SUBJECT_IP, OTHER_IP, SERVER = "10.1.1.5", "10.1.1.6", "192.0.2.10"
SUBJECT_CANARY = b"SUBJECT-CANARY-7f3a9c"
OTHER_CANARY = b"NONSUBJECT-CANARY-b81e44"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp()

needs_tools = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark (Debian package) is not installed"
)


def _tcp(
    src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int, data: bytes = b""
) -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _http_session(client: str, port: int, canary: bytes) -> list[bytes]:
    req = (
        b"POST /upload/" + canary + b" HTTP/1.1\r\nHost: files.example\r\n"
        b"Content-Length: 24\r\n\r\n" + canary
    )
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    s, a = 1000, 5000
    return [
        _tcp(client, port, SERVER, 80, 0x02, s, 0),
        _tcp(SERVER, 80, client, port, 0x12, a, s + 1),
        _tcp(client, port, SERVER, 80, 0x10, s + 1, a + 1),
        _tcp(client, port, SERVER, 80, 0x18, s + 1, a + 1, req),
        _tcp(SERVER, 80, client, port, 0x18, a + 1, s + 1 + len(req), resp),
        _tcp(client, port, SERVER, 80, 0x11, s + 1 + len(req), a + 1 + len(resp)),
        _tcp(SERVER, 80, client, port, 0x11, a + 1 + len(resp), s + 2 + len(req)),
        _tcp(client, port, SERVER, 80, 0x10, s + 2 + len(req), a + 2 + len(resp)),
    ]


def _write_capture(path: Path, spacing: float = 0.01) -> None:
    frames = _http_session(SUBJECT_IP, 41000, SUBJECT_CANARY)
    frames += _http_session(OTHER_IP, 42000, OTHER_CANARY)
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=T0 + i * spacing)


def _setup(lbm: Lbm, tmp_path: Path, fake: dict[str, str], *start: str) -> str:
    """Leases for both hosts, an investigator, a packets grant for p100; returns the
    investigator's identity text."""
    feed = tmp_path / "leases.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        f"p100,ip,{SUBJECT_IP},2026-03-01T00:00:00Z,\n"
        f"p200,ip,{OTHER_IP},2026-03-01T00:00:00Z,\n"
    )
    lbm("identity", "import", str(feed), check=True, env=fake)
    secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True, env=fake)
    officer = ("p500", "A. Officer", "head_of_professional_standards", "superintendent")
    argv = grant_argv(REF, "p100", channel="packets", officer=officer, extra=start)
    lbm(*argv, check=True, env=fake)
    return age.identity_file_text(secret)


def _records(paths: DataPaths, identity: str) -> list[Any]:
    ks = KeyStore(paths)
    auth_key = ks.unwrap_authorisation(REF, identity)
    records = []
    for seg in sorted((paths.archive / REF).glob("[0-9]*.age")):
        seg_key = ks.unwrap_segment(REF, int(seg.name.split(".")[0]), auth_key)
        with seg.open("rb") as fh:
            records += read_records(PlainStream(age.AgeReader(fh, [seg_key]).chunks()))
    return records


def _tshark_sources(tmp_path: Path, data: bytes) -> list[str]:
    out = tmp_path / "record.pcapng"
    out.write_bytes(data)
    text = subprocess.run(
        ["tshark", "-r", str(out), "-T", "fields", "-e", "ip.src"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in text.split("\n") if line]


@needs_tools
def test_only_packets_after_the_authorisation_starts_are_archived(lbm: Lbm, tmp_path: Path) -> None:
    """The grant starts in the middle of the subject's session (capture time): packets before
    that instant are metadata only, packets from it on are archived."""
    fake = {"LBM_FAKE_NOW": "2026-03-02T09:00:00Z"}
    identity = _setup(lbm, tmp_path, fake, "--start", "2026-03-02T10:00:04Z")
    pcap = tmp_path / "slow.pcap"
    _write_capture(pcap, spacing=1.0)  # subject's 8 packets at T0+0s .. T0+7s
    res = lbm("capture", "replay", str(pcap), "--json", check=True, env=fake)
    assert '"archived_packets": 4' in res.stdout
    paths = DataPaths(lbm.data_dir)
    (record,) = _records(paths, identity)
    assert _tshark_sources(tmp_path, record.data) == [SERVER, SUBJECT_IP, SERVER, SUBJECT_IP]
    assert SUBJECT_CANARY not in record.data  # the request (packet 4 at T0+3s) was before


@needs_tools
def test_subject_packets_archived_and_non_subject_canary_absent(lbm: Lbm, tmp_path: Path) -> None:
    fake = {"LBM_FAKE_NOW": "2026-03-02T09:00:00Z"}
    identity = _setup(lbm, tmp_path, fake)
    pcap = tmp_path / "mixed.pcap"
    _write_capture(pcap)
    res = lbm("capture", "replay", str(pcap), "--json", check=True, env=fake)
    assert '"archived_packets": 8' in res.stdout

    paths = DataPaths(lbm.data_dir)
    rows = {r["principal"]: r for r in read_stream(paths, "flow").to_pylist()}
    assert set(rows) == {"p100", "p200"}
    assert rows["p100"]["refs"] == [REF] and rows["p100"]["record_ids"]
    assert rows["p200"]["refs"] == [] and rows["p200"]["record_ids"] == []
    assert rows["p100"]["http_host"] == "files.example"

    # the investigator's key opens the segments; tshark reads the packets
    records = _records(paths, identity)
    assert [r.header["id"] for r in records] == rows["p100"]["record_ids"]
    assert all(
        r.header["channel"] == "packets" and r.header["principal"] == "p100" for r in records
    )
    sources = _tshark_sources(tmp_path, records[0].data)
    assert len(sources) == 8 and set(sources) == {SUBJECT_IP, SERVER}
    assert SUBJECT_CANARY in records[0].data and OTHER_CANARY not in records[0].data

    # nothing of the non-subject's payload, and no plaintext of the subject's, on disk
    for f in lbm.data_dir.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        assert OTHER_CANARY not in data, f
        assert SUBJECT_CANARY not in data, f
        if f.suffix == ".parquet":
            text = repr(pq.read_table(f).to_pylist()).encode()
            assert OTHER_CANARY not in text and SUBJECT_CANARY not in text, f


def _hello(htype: int, body: bytes) -> bytes:
    hs = bytes([htype]) + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def _tls_session(client: str, port: int, sni: str) -> list[bytes]:
    """Handshake, a ClientHello naming `sni`, a ServerHello, an encrypted-looking record."""
    name = sni.encode()
    ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    ch = _hello(
        1,
        b"\x03\x03"
        + bytes(32)
        + b"\x00\x00\x02\x13\x01\x01\x00"
        + struct.pack("!H", len(ext))
        + ext,
    )
    sh = _hello(2, b"\x03\x03" + bytes(32) + b"\x00\x13\x01\x00\x00\x00")
    app = b"\x17\x03\x03\x00\x10" + SUBJECT_CANARY[:16]
    s, a = 7000, 9000
    return [
        _tcp(client, port, SERVER, 443, 0x02, s, 0),
        _tcp(SERVER, 443, client, port, 0x12, a, s + 1),
        _tcp(client, port, SERVER, 443, 0x10, s + 1, a + 1),
        _tcp(client, port, SERVER, 443, 0x18, s + 1, a + 1, ch),
        _tcp(SERVER, 443, client, port, 0x18, a + 1, s + 1 + len(ch), sh),
        _tcp(client, port, SERVER, 443, 0x18, s + 1 + len(ch), a + 1 + len(sh), app),
    ]


@needs_tools
def test_do_not_decrypt_server_keeps_a_subjects_tls_flow_out(lbm: Lbm, tmp_path: Path) -> None:
    """A subject's TLS flow to a server on the do-not-decrypt list (`*.nhs.uk` by default) is
    not archived under a grant that does not open such servers; their other flow is."""
    fake = {"LBM_FAKE_NOW": "2026-03-02T09:00:00Z"}
    _setup(lbm, tmp_path, fake)
    pcap = tmp_path / "dnd.pcap"
    frames = _tls_session(SUBJECT_IP, 43000, "www.nhs.uk")
    frames += _http_session(SUBJECT_IP, 41000, b"SUBJECT-HTTP-CANARY")
    with pcap.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=T0 + i * 0.01)
    res = lbm("capture", "replay", str(pcap), "--json", check=True, env=fake)
    assert '"archived_packets": 8' in res.stdout  # the HTTP session only
    rows = {r["server_port"]: r for r in read_stream(DataPaths(lbm.data_dir), "flow").to_pylist()}
    assert rows[443]["server_name"] == "www.nhs.uk"
    assert rows[443]["refs"] == [] and rows[443]["record_ids"] == []
    assert rows[80]["refs"] == [REF]


def test_concurrent_flows_of_a_subject_share_one_segment(lbm: Lbm, tmp_path: Path) -> None:
    """Flows of one subject that overlap in time are written as whole records into the same
    segment, not one segment per open flow."""
    fake = {"LBM_FAKE_NOW": "2026-03-02T09:00:00Z"}
    identity = _setup(lbm, tmp_path, fake)
    sessions = [_http_session(SUBJECT_IP, 43000 + i, SUBJECT_CANARY) for i in range(5)]
    interleaved = [frame for step in zip(*sessions, strict=True) for frame in step]
    pcap = tmp_path / "concurrent.pcap"
    with pcap.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, f in enumerate(interleaved):
            w.writepkt(f, ts=T0 + i * 0.01)
    res = lbm("capture", "replay", str(pcap), "--json", check=True, env=fake)
    assert '"archived_packets": 40' in res.stdout
    paths = DataPaths(lbm.data_dir)
    segments = sorted((paths.archive / REF).glob("[0-9]*.age"))
    assert len(segments) == 1, [s.name for s in segments]
    records = _records(paths, identity)
    assert len(records) == 5
    assert all(r.data.count(SUBJECT_CANARY) == 2 for r in records)  # request path and body
    assert lbm("archive", "verify", REF).returncode == 0

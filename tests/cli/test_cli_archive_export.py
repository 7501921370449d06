"""`lbm archive export-raw`: files named by kind, private modes, never an overwrite, and nothing
half-written after a failure (wrong key midway, altered ciphertext, file size limit)."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

from lbm_testing import REPO, Lbm

from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths

REF = "AUTH-EXP-1"
BIG = bytes(range(256)) * 800  # 200 KiB: several age chunks
RECORDS = [
    ("email", "message", b"From: a@force.example\r\n\r\nhello\r\n"),
    ("packets", "pcapng", b"\x0a\x0d\x0d\x0a pcapng blocks"),
    ("web", "request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("web", "response", b"HTTP/1.1 200 OK\r\n\r\n"),
    ("web", "body-chunk", b"<html>"),
]


def _archive(data: Path, tmp: Path, groups: list[list[tuple[str, str, bytes]]]) -> Path:
    """One segment per group of records; returns the investigator identity file."""
    paths = DataPaths(data)
    secret, public = age.generate()
    ident = tmp / "inv.key"
    ident.write_text(age.identity_file_text(secret))
    KeyStore(paths).create_authorisation_key(REF, [public])
    key = signing.load(paths)
    archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
    for group in groups:
        for channel, kind, content in group:
            sink = archive.open_record(REF, channel, "p12345", "2026-03-01T09:00:00Z", kind)
            sink.write(content)
            sink.close()
        archive.close()
        archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
    return ident


def _export(lbm: Lbm, ident: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = lbm("archive", "export-raw", REF, "--identity", str(ident), "--out", str(out), *extra)
    return subprocess.CompletedProcess([], result.returncode, result.stdout, result.stderr)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _last_export(data: Path) -> dict:
    lines = (data / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == "export"][-1]


def test_files_are_named_by_kind_and_private(lbm: Lbm, tmp_path: Path) -> None:
    ident = _archive(lbm.data_dir, tmp_path, [RECORDS])
    out = tmp_path / "out" / "case"
    old = os.umask(0o022)  # the CLI narrows it; the export sets its own modes as well
    try:
        assert _export(lbm, ident, out).returncode == 0
    finally:
        os.umask(old)
    seg = out / REF / "000001"
    assert _tree(out) == [
        REF, f"{REF}/000001", f"{REF}/000001/1.eml", f"{REF}/000001/2.pcapng",
        f"{REF}/000001/3.http", f"{REF}/000001/4.http", f"{REF}/000001/5.http",
        f"{REF}/000001/records.jsonl",
    ]  # fmt: skip
    for n, (_, _, content) in enumerate(RECORDS, 1):
        (path,) = seg.glob(f"{n}.*")
        assert path.read_bytes() == content
    meta = [json.loads(x) for x in (seg / "records.jsonl").read_text().splitlines()]
    assert [m["file"] for m in meta] == ["1.eml", "2.pcapng", "3.http", "4.http", "5.http"]
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_an_earlier_export_is_never_overwritten(lbm: Lbm, tmp_path: Path) -> None:
    ident = _archive(lbm.data_dir, tmp_path, [RECORDS[:1], RECORDS[1:2]])
    out = tmp_path / "out"
    assert _export(lbm, ident, out, "--segment", "1").returncode == 0
    first = out / REF / "000001" / "1.eml"
    first.write_bytes(b"the investigator's working copy")
    again = _export(lbm, ident, out)
    assert again.returncode == 1
    assert f"{REF}/000001 exported there already; an export never overwrites" in again.stderr
    assert first.read_bytes() == b"the investigator's working copy"
    assert not (out / REF / "000002").exists()
    # another segment into the same directory is a new export, not an overwrite
    assert _export(lbm, ident, out, "--segment", "2").returncode == 0
    assert (out / REF / "000002" / "1.pcapng").read_bytes() == RECORDS[1][2]
    assert _export(lbm, ident, out, "--segment", "2").returncode == 1


def test_a_wrong_key_midway_leaves_nothing(lbm: Lbm, tmp_path: Path) -> None:
    """Segment 1 decrypts; segment 2's wrapped key was made for another authorisation key:
    the export fails at segment 2 and segment 1's plaintext is not left behind either."""
    ident = _archive(lbm.data_dir, tmp_path, [[("email", "message", BIG)]] * 2)
    other = age.encrypt_bytes(age.identity_file_text(age.generate()[0]).encode(),
                              [age.generate()[1]])  # fmt: skip
    (lbm.data_dir / "keystore" / REF / "000002.age").write_bytes(other)
    out = tmp_path / "out"
    result = _export(lbm, ident, out)
    assert result.returncode == 1
    assert f"segment {REF}/000002: cannot unwrap" in result.stderr
    assert "nothing was exported" in result.stderr
    assert _tree(out) == []
    entry = _last_export(lbm.data_dir)
    assert entry["fields"]["ok"] is False


def test_altered_ciphertext_inside_a_record_leaves_nothing(lbm: Lbm, tmp_path: Path) -> None:
    ident = _archive(lbm.data_dir, tmp_path, [[("email", "message", BIG)]])
    seg = lbm.data_dir / "archive" / REF / "000001.age"
    data = bytearray(seg.read_bytes())
    data[-80_000] ^= 0x01  # a middle chunk: the first chunk was already written out
    seg.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = _export(lbm, ident, out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"segment {REF}/000001: chunk 1 fails authentication (file altered)" in result.stderr
    assert "nothing was exported" in result.stderr
    assert _tree(out) == []


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_disk_full_midway_leaves_nothing(lbm: Lbm, tmp_path: Path) -> None:
    """A file size limit (as a full disk would) stops the second record: a clean error, the
    failure audited, no partial file left under any name."""
    ident = _archive(lbm.data_dir, tmp_path, [[("email", "message", b"small"),
                                               ("email", "message", BIG)]])  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(lbm.data_dir),
           "archive", "export-raw", REF, "--identity", str(ident), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=60, preexec_fn=_limit_file_size
    )
    assert proc.returncode == 1, proc.stderr
    assert "file size limit exceeded" in proc.stderr and "Traceback" not in proc.stderr
    assert _tree(out) == []
    entry = _last_export(lbm.data_dir)
    assert entry["fields"]["ok"] is False and "file size limit" in entry["fields"]["error"]
    assert _export(lbm, ident, out).returncode == 0  # and a later export works
    assert (out / REF / "000001" / "2.eml").read_bytes() == BIG

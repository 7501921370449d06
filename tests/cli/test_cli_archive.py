"""`lbm archive verify | records | export-raw` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths

REF = "AUTH-CLI-1"


def _archive(data: Path, tmp: Path, segments: int = 3) -> Path:
    """Archive one record per segment; returns the investigator identity file."""
    paths = DataPaths(data)
    secret, public = age.generate()
    ident = tmp / "inv.key"
    ident.write_text(age.identity_file_text(secret))
    KeyStore(paths).create_authorisation_key(REF, [public])
    key = signing.load(paths)
    archive = Archive(
        paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False), segment_max_bytes=1
    )
    for n in range(segments):
        sink = archive.open_record(REF, "email", "p12345", "2026-03-01T09:00:00Z", "message")
        sink.write(f"message {n}\r\n".encode() * 10)
        sink.close()
    archive.close()
    return ident


def test_verify_ok_then_names_the_tampered_segment(lbm, tmp_path: Path) -> None:
    _archive(lbm.data_dir, tmp_path)
    ok = lbm("archive", "verify", check=True)
    assert "archive ok: 1 archive(s), 3 sealed segment(s)" in ok.stdout
    assert lbm("archive", "verify", REF, check=True).returncode == 0
    seg = lbm.data_dir / "archive" / REF / "000002.age"
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF
    seg.write_bytes(bytes(data))
    bad = lbm("archive", "verify", REF)
    assert bad.returncode == 1
    assert f"problem: {REF}/000002: ciphertext SHA-256 does not match" in bad.stdout
    report = json.loads(lbm("archive", "verify", "--json").stdout)
    assert report["ok"] is False and len(report["problems"]) == 1


def test_verify_unknown_ref_fails(lbm) -> None:
    result = lbm("archive", "verify", "NOPE")
    assert result.returncode == 1 and "NOPE: no archive" in result.stdout
    assert lbm("archive", "verify", "../x").returncode == 2


def test_records_lists_the_index_without_content(lbm, tmp_path: Path) -> None:
    _archive(lbm.data_dir, tmp_path, segments=2)
    items = json.loads(lbm("archive", "records", REF, "--json", check=True).stdout)
    assert [i["id"] for i in items] == [f"{REF}/000001/1", f"{REF}/000002/1"]
    assert [i["length"] for i in items] == [len(b"message 0\r\n" * 10)] * 2
    assert "message 0" not in json.dumps(items)


def test_export_raw_writes_exact_bytes_outside_the_data_dir(lbm, tmp_path: Path) -> None:
    ident = _archive(lbm.data_dir, tmp_path, segments=2)
    out = tmp_path / "export"
    inside = lbm(
        "archive", "export-raw", REF, "--identity", str(ident), "--out", str(lbm.data_dir / "x")
    )
    assert inside.returncode == 2 and "inside the data directory" in inside.stderr
    result = lbm(
        "archive",
        "export-raw",
        REF,
        "--identity",
        "-",
        "--out",
        str(out),
        input=ident.read_text(),
        check=True,
    )
    assert "000002: 1 record(s)" in result.stdout
    assert (out / REF / "000001" / "1.eml").read_bytes() == b"message 0\r\n" * 10
    meta = json.loads((out / REF / "000002" / "records.jsonl").read_text())
    assert meta["id"] == f"{REF}/000002/1" and meta["complete"] is True
    assert meta["file"] == "1.eml"
    entry = [
        json.loads(line)
        for line in (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ][-1]
    assert entry["action"] == "export" and entry["fields"]["records"] == 2
    wrong = tmp_path / "wrong.key"
    wrong.write_text(age.identity_file_text(age.generate()[0]))
    refused = lbm(
        "archive", "export-raw", REF, "--identity", str(wrong), "--out", str(tmp_path / "e2")
    )
    assert refused.returncode == 1 and "cannot unwrap" in refused.stderr
    KeyStore(DataPaths(lbm.data_dir)).destroy_segment(REF, 1)
    shredded = lbm(
        "archive",
        "export-raw",
        REF,
        "--identity",
        str(ident),
        "--out",
        str(tmp_path / "e3"),
        check=True,
    )
    assert "000001: key destroyed" in shredded.stdout
    assert not (tmp_path / "e3" / REF / "000001").exists()

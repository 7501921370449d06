"""Archive failure for a subject: the traffic goes on, the gap is audited and counted, the metadata
flag is set, and no content reaches the audit log.

The failure is real: one authorisation's archive directory is a tiny tmpfs (mounted for the
test, needs CAP_SYS_ADMIN: the test skips, saying so, where mounting is not allowed), so the
segment writes hit ENOSPC exactly as on a full disk, while another ref on the normal disk keeps
archiving the same flow.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import Lbm
from mitmproxy import http
from mitmproxy.test import tflow
from web_archive_support import (
    REF,
    SUBJECT_IP,
    ProxyDaemon,
    client_bundle,
    curl,
    setup_subject,
    web_rows,
)
from web_upstream import Upstream, sha256_of

from addons import archive_records as rec
from addons.archiver import Archiver
from addons.state import FLOW_KEY, FlowState, conn_state
from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths
from store.segment import PlainStream, read_records

FULL, FINE = "ca1-gap-full", "ca1-gap-fine"
CANARY = b"GAP-CANARY-5d1e0b"


@pytest.fixture
def full_dir(lbm: Lbm) -> Iterator[Path]:
    target = lbm.data_dir / "archive" / FULL
    target.mkdir(parents=True, mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {mount.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _audit(data: Path) -> list[dict[str, Any]]:
    lines = (data / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_disk_full_is_a_gap_audited_once_and_traffic_continues(
    lbm: Lbm, full_dir: Path, tmp_path: Path
) -> None:
    paths = DataPaths(lbm.data_dir)
    secret, public = age.generate()
    for ref in (FULL, FINE):
        KeyStore(paths).create_authorisation_key(ref, [public])
    key = signing.load(paths)
    audit = AuditLog(paths, key, Clock(), witness=False)
    archive = Archive(paths, key, Clock(), audit=audit)
    addon = Archiver(archive, audit, "tester", Clock())

    req = http.Request(
        "www.example.test", 443, b"POST", b"https", b"", b"/up/" + CANARY, b"HTTP/1.1",
        http.Headers([(b"Host", b"www.example.test")]), None, None, 0.0, None,
    )  # fmt: skip
    flow = tflow.tflow(req=req)
    flow.metadata[FLOW_KEY] = FlowState(request_id="req-gap-1", started=0.0, refs=(FULL, FINE))
    conn_state(flow.client_conn).principal = "p12345"

    addon.requestheaders(flow)
    stream = flow.request.stream
    assert callable(stream)
    body = [CANARY + bytes([i]) * 65_000 for i in range(40)]  # ~2.5 MiB: far more than 96 KiB
    for chunk in body:
        assert stream(chunk) == chunk  # relayed unchanged: traffic continues
    addon.request(flow)
    flow.response = http.Response.make(200, b"ok")
    addon.responseheaders(flow)
    addon.response(flow)
    archive.close()

    state = flow.metadata[FLOW_KEY]
    assert state.archive_gap is True
    assert addon.counts.gaps == 1 and addon.counts.gap_flows == 1
    assert addon.open_flows == 0

    gaps = [e for e in _audit(lbm.data_dir) if e["action"] == "capture_gap"]
    assert len(gaps) == 1  # once per ref per flow, not per failed chunk
    assert gaps[0]["refs"] == [FULL]
    gap = gaps[0]["fields"]
    assert gap["request_id"] == "req-gap-1" and gap["channel"] == "web"
    assert gap["reason"] == "disk_full" and gap["item"] == rec.REQUEST_BODY
    assert CANARY.decode() not in json.dumps(gaps[0])

    # the full archive took the request head before the disk filled, then nothing more; the
    # other ref's archive has the whole flow
    full_ids = [r for r in state.record_ids if r.startswith(f"{FULL}/")]
    fine_ids = [r for r in state.record_ids if r.startswith(f"{FINE}/")]
    assert full_ids == [f"{FULL}/000001/1"] and len(fine_ids) >= 5
    ks = KeyStore(paths)
    auth = ks.unwrap_authorisation(FINE, age.identity_file_text(secret))
    records = []
    for seg in sorted((paths.archive / FINE).glob("[0-9]*.age")):
        seg_key = ks.unwrap_segment(FINE, int(seg.name.split(".")[0]), auth)
        with seg.open("rb") as fh:
            records += read_records(PlainStream(age.AgeReader(fh, [seg_key]).chunks()))
    assert [r.header["id"] for r in records] == fine_ids
    got = b"".join(r.data for r in records if r.header["kind"] == rec.REQUEST_BODY)
    assert got == b"".join(body)

    # the next flow to the full archive tries again (and is audited again)
    flow2 = tflow.tflow(req=req)
    flow2.metadata[FLOW_KEY] = FlowState(request_id="req-gap-2", started=0.0, refs=(FULL,))
    conn_state(flow2.client_conn).principal = "p12345"
    addon.requestheaders(flow2)
    assert callable(flow2.request.stream)
    for chunk in body[:4]:
        flow2.request.stream(chunk)
    addon.request(flow2)
    gaps = [e for e in _audit(lbm.data_dir) if e["action"] == "capture_gap"]
    assert [g["fields"]["request_id"] for g in gaps] == ["req-gap-1", "req-gap-2"]


def test_disk_full_through_the_daemon_keeps_the_subject_browsing(
    web_lbm: Lbm, upstream: Upstream, tmp_path: Path
) -> None:
    """The real daemon, the subject's archive on a full tmpfs: the download completes byte for
    byte, the row says `archive_gap`, and the audit's `capture_gap` names the row's request."""
    identity = setup_subject(web_lbm, tmp_path, upstream)
    del identity
    target = web_lbm.data_dir / "archive" / REF
    target.mkdir(parents=True, mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {mount.stderr.strip()}")
    try:
        with ProxyDaemon(web_lbm, tmp_path / "logs") as proxy:
            bundle = client_bundle(web_lbm.data_dir, upstream, tmp_path / "bundle.pem")
            size = 3_000_000
            for _ in range(2):
                got = curl(proxy, bundle, SUBJECT_IP, upstream.url(f"/bytes/{size}?seed=g"))
                assert got.returncode == 0, got.stderr
                assert hashlib.sha256(got.stdout).hexdigest() == sha256_of(size, "g")
            output = proxy.output()
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
    rows = [r for r in web_rows(web_lbm.data_dir) if r["refs"] == [REF]]
    assert len(rows) == 2 and all(r["error_kind"] == "archive_gap" for r in rows)
    gaps = [e for e in _audit(web_lbm.data_dir) if e["action"] == "capture_gap"]
    assert sorted(g["fields"]["request_id"] for g in gaps) == sorted(r["request_id"] for r in rows)
    assert all(g["refs"] == [REF] and g["fields"]["reason"] == "disk_full" for g in gaps)
    assert "archive write failed (disk_full)" in output and REF not in output

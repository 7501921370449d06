"""Fail closed under a running `lbm capture live`: the registry is corrupted while the daemon
captures a subject's traffic. Once its policy snapshot has gone 5 s without a successful read,
the subject's new connection is metadata only (no archived packet); when the registry is
restored, archiving resumes. The outage is audited once, with its end, and `run/policy.json`
says so while it lasts. Real parts: `lbm` subprocesses, a veth pair in a network namespace,
tcpreplay sending the traffic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest
from lbm_testing import REPO, Lbm, grant_argv
from netns import sh, veth_namespace

from store import agefile as age
from store import sqlite as store_sqlite
from store.audit import AuditLog
from store.clock import Clock
from store.metadata import read_stream
from store.paths import DataPaths

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("tcpreplay") is None,
        reason="needs iproute2 and tcpreplay (Debian packages)",
    ),
]

REF = "ca1-2026-0777"
SUBJECT_IP, SERVER = "10.1.1.5", "192.0.2.10"


@pytest.fixture
def netns() -> Iterator[str]:
    with veth_namespace("lbmfc") as name:
        yield name


def _tcp(src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int,
         data: bytes = b"") -> bytes:  # fmt: skip
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def session_pcap(path: Path, port: int) -> Path:
    """One complete HTTP exchange of the subject's host (8 packets, ends with FIN/ACK)."""
    req = b"GET /x HTTP/1.1\r\nHost: files.example\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    s, a = 1000, 5000
    frames = [
        _tcp(SUBJECT_IP, port, SERVER, 80, 0x02, s, 0),
        _tcp(SERVER, 80, SUBJECT_IP, port, 0x12, a, s + 1),
        _tcp(SUBJECT_IP, port, SERVER, 80, 0x10, s + 1, a + 1),
        _tcp(SUBJECT_IP, port, SERVER, 80, 0x18, s + 1, a + 1, req),
        _tcp(SERVER, 80, SUBJECT_IP, port, 0x18, a + 1, s + 1 + len(req), resp),
        _tcp(SUBJECT_IP, port, SERVER, 80, 0x11, s + 1 + len(req), a + 1 + len(resp)),
        _tcp(SERVER, 80, SUBJECT_IP, port, 0x11, a + 1 + len(resp), s + 2 + len(req)),
        _tcp(SUBJECT_IP, port, SERVER, 80, 0x10, s + 2 + len(req), a + 2 + len(resp)),
    ]
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + i * 0.01)
    return path


def wait_state(run_dir: Path, wanted: str, limit: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        try:
            if json.loads((run_dir / "policy.json").read_text())["state"] == wanted:
                return time.monotonic() - began
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"run/policy.json never said {wanted!r} within {limit} s")


def test_live_capture_archives_nothing_while_the_registry_is_corrupt(
    lbm: Lbm, tmp_path: Path, netns: str
) -> None:
    feed = tmp_path / "leases.csv"
    feed.write_text(
        f"principal,kind,value,valid_from,valid_to\np100,ip,{SUBJECT_IP},2020-01-01T00:00:00Z,\n"
    )
    lbm("identity", "import", str(feed), check=True)
    _secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True)
    officer = ("p500", "A. Officer", "head_of_professional_standards", "superintendent")
    lbm(*grant_argv(REF, "p100", channel="packets", officer=officer), check=True)
    paths = DataPaths(lbm.data_dir)
    conn = store_sqlite.connect(paths.registry)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the whole registry in the main file
    conn.close()
    pcaps = [session_pcap(tmp_path / f"s{port}.pcap", port) for port in (41000, 41001, 41002)]

    def send(pcap: Path) -> None:
        sh("ip", "netns", "exec", netns, "tcpreplay", "-q", "-i", "lbm-tx", str(pcap))
        time.sleep(1.0)

    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "appliance.cli.main",
           "--data-dir", str(lbm.data_dir), "capture", "live", "--interface", "lbm-rx",
           "--json"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    ready = paths.run / "capture-lbm-rx.ready"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "capture never became ready"
            time.sleep(0.05)
        wait_state(paths.run, "ok", 10)
        send(pcaps[0])  # policy fresh: archived
        good = paths.registry.read_bytes()
        with paths.registry.open("r+b") as fh:
            fh.write(b"\xff" * 100)
        waited = wait_state(paths.run, "stale", 12)
        assert waited > 4.5, waited
        send(pcaps[1])  # policy stale: metadata only
        with paths.registry.open("r+b") as fh:
            fh.write(good[:100])
        wait_state(paths.run, "ok", 10)
        send(pcaps[2])  # restored: archived again
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["packets"] == 24, summary
    assert summary["archived_packets"] == 16, summary  # sessions 1 and 3, not 2
    rows = {
        r["client_port"]: r
        for r in read_stream(paths, "flow").to_pylist()
        if r["client_ip"] == SUBJECT_IP
    }
    assert set(rows) == {41000, 41001, 41002}
    assert all(r["principal"] == "p100" for r in rows.values())  # identity still resolved
    assert rows[41000]["refs"] == [REF] and rows[41002]["refs"] == [REF]
    assert rows[41001]["refs"] == [] and rows[41001]["record_ids"] == []
    entries = [
        e
        for e in AuditLog(paths, None, Clock()).entries()
        if e["action"] in ("capture_gap", "policy_restored")
    ]
    assert [(e["action"], e["fields"].get("reason")) for e in entries] == [
        ("capture_gap", "policy_stale"),
        ("policy_restored", "policy_stale"),
    ]

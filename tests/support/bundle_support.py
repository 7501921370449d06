"""The data directory tests/evidence/test_bundle*.py share: investigators registered with
`--sign-key`, grants, and archives written by the real archive writer (email and packets
records), one of them cut off by a crash and sealed as truncated by `lbm archive recover`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
from lbm_testing import HOPS, REGISTERED_FROM, REPO, Lbm, grant_argv

from appliance.evidence.bundle import GatewaySide
from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths

REF = "ca1-2026-0101"
REF_OTHER = "ca1-2026-0102"
REF_SUBJECT = "ca1-2026-0103"
REF_TRUNC = "ca1-2026-0104"
SUBJECT = "p12345"
MAIL_CANARY = b"MAIL-CANARY-51c0"
PACKET_CANARY = b"PACKET-CANARY-9e22"


@dataclass
class Setup:
    tmp: Path
    lbm: Lbm
    identity: Path
    identity_text: str
    recipient: str
    ssh_key: Path
    ssh_pub: str
    gateway_signers: Path
    gateway_id: str
    records: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    packet_count: int = 0
    mail_canary: bytes = MAIL_CANARY
    packet_canary: bytes = PACKET_CANARY
    truncated: tuple[str, list[str], str] = ("", [], "")
    web_flow: str = ""

    @staticmethod
    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def new_ssh_key(self, name: str) -> tuple[Path, str]:
        path = self.tmp / f"{name}_ed25519"
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                            str(path)], check=True)  # fmt: skip
        return path, Path(f"{path}.pub").read_text().strip()

    def side(self, login: str = "root", custodians: tuple[str, ...] = ()) -> GatewaySide:
        """What `lbm archive bundle` hands appliance.evidence.bundle, for in-process calls."""
        paths = DataPaths(self.lbm.data_dir)
        return GatewaySide(paths, self.gateway_id, signing.load(paths), custodians, "2026-01",
                           login, Clock().now())  # fmt: skip


def email_message(n: int) -> bytes:
    return (
        b"From: p12345@force.example\r\nTo: someone@example.org\r\n"
        b"Subject: test message %d\r\nMessage-ID: <%d@force.example>\r\n\r\n"
        % (n, n)
        + MAIL_CANARY
        + b" body line\r\n"
    )


def pcapng_record(n_packets: int, port: int) -> bytes:
    """A flow's pcapng blocks (SHB, IDB, EPBs), as the packets channel archives them."""
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf)
    for i in range(n_packets):
        tcp = dpkt.tcp.TCP(sport=port, dport=80, seq=1000 + i, flags=0x18, data=PACKET_CANARY)
        ip = dpkt.ip.IP(src=socket.inet_aton("10.1.1.5"), dst=socket.inet_aton("192.0.2.10"),
                        p=6, ttl=64, data=tcp)  # fmt: skip
        eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip)
        writer.writepkt(bytes(eth), ts=1772445600 + i)
    return buf.getvalue()


def audit_entries(lbm: Lbm) -> list[dict[str, Any]]:
    lines = (lbm.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def bundle_files(bundle: Path) -> set[str]:
    return {f["path"] for f in json.loads((bundle / "BUNDLE.json").read_bytes())["files"]}


def manifest_files(opened: Path) -> list[Any]:
    return list(json.loads((opened / "MANIFEST.json").read_bytes())["files"])


def ssh_verify(signers: Path, principal: str, signed: Path) -> None:
    """Stock `ssh-keygen -Y verify` of SIGNED.sig over SIGNED."""
    with signed.open("rb") as fh:
        proc = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", principal, "-n",
             "lbm-evidence", "-s", f"{signed}.sig"],
            stdin=fh, capture_output=True, text=True,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Good" in proc.stdout


CRASH = """
import os, sys
from pathlib import Path
from store import signing
from store.archive import Archive
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
archive = Archive(paths, signing.load(paths), Clock())
for size in (200 * 1024, 40, 40):
    sink = archive.open_record(sys.argv[2], "email", "p12345", "2026-03-02T10:00:00Z", "message")
    sink.write(b"x" * size)
    sink.close()
os._exit(0)  # a crash: the segment is never sealed and its last partial chunk is lost
"""


WEB_BODY = b"<html>" + b"WEB-CANARY-77d1 " * 100 + b"</html>"


def _web_flow(archive: Archive, audit: AuditLog) -> str:
    """One request and response through the real web Archiver (addons/archiver.py); returns
    the flow id."""
    from mitmproxy import http
    from mitmproxy.test import tflow

    from addons.archiver import Archiver
    from addons.state import FLOW_KEY, FlowState, conn_state

    addon = Archiver(archive, audit, "tester", Clock())
    req = http.Request("www.example.test", 443, b"POST", b"https", b"", b"/form", b"HTTP/1.1",
                       http.Headers([(b"Host", b"www.example.test")]), None, None, 0.0,
                       None)  # fmt: skip
    flow = tflow.tflow(req=req)
    flow.metadata[FLOW_KEY] = FlowState(request_id=flow.id, started=0.0, refs=(REF,))
    conn_state(flow.client_conn).principal = SUBJECT
    addon.requestheaders(flow)
    flow.request.stream = None
    flow.request.raw_content = b"q=evidence"
    addon.request(flow)
    flow.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
        [(b"Content-Type", b"text/html")]), WEB_BODY, None, 0.0, None)  # fmt: skip
    addon.response(flow)
    return str(flow.id)


def _write_archive(data: Path, setup: Setup) -> None:
    paths = DataPaths(data)
    key = signing.load(paths)
    for group in range(2):
        archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
        for i in range(2):
            channel, kind = ("email", "message") if i == 0 else ("packets", "pcapng")
            n = 2 * group + i
            content = email_message(n) if i == 0 else pcapng_record(3 + group, 40000 + n)
            sink = archive.open_record(REF, channel, SUBJECT, "2026-03-02T10:00:00Z", kind)
            sink.write(content)
            setup.records[sink.close()] = (channel, content)
            if channel == "packets":
                setup.packet_count += 3 + group
        if group == 1:
            setup.web_flow = _web_flow(archive, AuditLog(paths, key, Clock(), witness=False))
        archive.close()


def inproc(data: Path, *args: str) -> str:
    """Run a setup step through the real CLI in this process (no interpreter start per step;
    the commands under test run as subprocesses through `Lbm`)."""
    from click.testing import CliRunner

    from appliance.cli import main

    if "archive" not in main.cli.commands:
        main._register()
    old = os.umask(0o077)
    try:
        result = CliRunner().invoke(main.cli, ["--data-dir", str(data), *args])
    finally:
        os.umask(old)
    assert result.exit_code == 0, f"lbm {' '.join(args)}: {result.output}"
    return result.stdout


def make_setup(tmp: Path) -> Setup:
    lbm = Lbm(tmp / "data")
    data = lbm.data_dir
    inproc(data, "init")
    secret, public = age.generate()
    identity = tmp / "inv1.key"
    identity.write_text(age.identity_file_text(secret))
    status = json.loads(inproc(data, "status", "--json"))
    signers = tmp / "gateway.allowed_signers"
    signers.write_text(status["allowed_signers"] + "\n")
    setup = Setup(tmp, lbm, identity, identity.read_text(), public, tmp / "inv1_ed25519", "",
                  signers, str(status["gateway"]))  # fmt: skip
    setup.ssh_pub = setup.new_ssh_key("inv1")[1]
    inproc(data, "keys", "investigator", "add", "inv1", public, "--principal", "p500", "--login",
           "root", "--sign-key", f"{setup.ssh_key}.pub")  # fmt: skip
    inproc(data, "keys", "investigator", "add", "inv2", age.generate()[1], "--principal", "p501",
           "--login", "alice")  # fmt: skip
    principal, name, role, rank = HOPS
    inproc(data, "officer", "add", principal, "--name", name, "--role", role, "--rank", rank,
           "--from", REGISTERED_FROM)  # fmt: skip
    both = ("--channel", "packets", "--channel", "web")
    inproc(data, *grant_argv(REF, SUBJECT, channel="email", extra=both))
    inproc(data, *grant_argv(REF_OTHER, SUBJECT, channel="email", investigator="inv2"))
    inproc(data, *grant_argv(REF_SUBJECT, "p500", channel="email", investigator="inv2"))
    inproc(data, *grant_argv(REF_TRUNC, SUBJECT, channel="email"))
    _write_archive(lbm.data_dir, setup)
    subprocess.run([sys.executable, "-c", CRASH, str(lbm.data_dir), REF_TRUNC], cwd=REPO,
                   check=True)  # fmt: skip
    inproc(data, "archive", "recover", REF_TRUNC)
    setup.truncated = (REF_TRUNC, [f"{REF_TRUNC}/000001/2", f"{REF_TRUNC}/000001/3"],
                       f"{REF_TRUNC}/000001/1")  # fmt: skip
    return setup

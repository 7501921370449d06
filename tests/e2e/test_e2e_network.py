"""End to end on a simulated network (issue 17): three namespaces made by the test (force clients,
gateway, internet; tests/support/netns.py), no proxy configured on the clients.

The gateway runs `lbm run`, which supervises `lbm proxy run` (transparent mode), `lbm smtp run`
and `lbm capture live --interface g-c` (its inside interface, from `[capture] interfaces`); the
redirect of TCP 80/443 to the proxy and the QUIC drop are `lbm gateway rules --apply` (from
`[gateway] inside_interface`, `inside_networks` and the proxy's fixed port). The
internet namespace holds a real HTTP/HTTPS server and a real SMTP server. Two client addresses
map to a subject and a non-subject through an identity feed (`lbm identity import`): IP leases
and email addresses. The subject is under one authorisation for web, email and packets.

Scenario (one run shared by the tests below): web and mail from both users while the internet's
SMTP server is down, so accepted mail waits in the spool; a loop of web and mail from both users
(`TrafficLoop`) starts, and `lbm run` is stopped (SIGTERM) and started again under it, after the
SMTP server comes up; the loop ends once traffic flows again; more web traffic; every accepted
message is delivered; `lbm run` stopped. Then the data dir, the archive (`lbm archive
export-raw` with the investigator's identity), the SMTP server's mailbox and every byte `lbm run`
and its daemons printed are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_network import (
    SMTP_SERVER,
    LbmRun,
    TrafficLoop,
    gateway_rules,
    mailbox,
    scripts,
    send_mail,
    start_script,
    subject_of,
    undelivered,
)
from lbm_testing import Lbm
from mail_relay import set_option, spool_entries, wait_until
from netns import WEB_SERVER, Topology, gateway_topology, peer_cert
from web_proxy import investigator, proxy_ca
from web_upstream import TestCA

from store.metadata import read_stream
from store.paths import DataPaths

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make network namespaces"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (Debian package)"),
]

REF = "op-e2e-1"
SUBJECT, OTHER = "p12345", "p67890"
SUBJECT_ADDR, OTHER_ADDR, OUTSIDE_ADDR = (
    "subject@force.example",
    "other@force.example",
    "someone@elsewhere.example",
)
HOST = "www.example.test"
PROXY_PORT = 3129
MARK = "subject-mark-3c9b1f"  # in the subject's requests and mail: must be archived
CANARY = "nonsubject-canary-5d1e0a77"  # in the non-subject's: must be nowhere we keep


@dataclass
class World:
    topo: Topology
    data_dir: Path
    run: LbmRun
    subject_ip: str
    other_ip: str
    server_sha: str
    subject_seen_sha: str
    other_seen_sha: str
    spooled_at_stop: int
    stopped_at: datetime
    loop: list[dict[str, Any]]  # the traffic loop's attempts, in order (TrafficLoop)
    mailbox: list[tuple[dict[str, Any], bytes]]
    export: Path

    def rows(self, stream: str) -> list[dict[str, Any]]:
        return list(read_stream(DataPaths(self.data_dir), stream).to_pylist())

    def exported(self) -> list[tuple[dict[str, Any], bytes]]:
        got = []
        for seg in sorted((self.export / REF).iterdir()):
            for line in (seg / "records.jsonl").read_text().splitlines():
                meta = json.loads(line)
                got.append((meta, (seg / meta["file"]).read_bytes()))
        return got


def _curl(topo: Topology, src: str, url: str, *args: str) -> str:
    r = subprocess.run(
        [*topo.exec(topo.client), "curl", "-sS", "--max-time", "20", "--interface", src,
         "--resolve", f"{HOST}:443:{topo.server_ip}", "--resolve", f"{HOST}:80:{topo.server_ip}",
         *args, url],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip
    assert r.returncode == 0, f"curl {url} from {src}: {r.stderr}"
    return r.stdout


def _configure(lbm: Lbm, topo: Topology, tmp: Path, server_ca: Path) -> str:
    """The gateway's configuration, identity feed, investigator and the subject's grant; returns
    the investigator's identity file."""
    gw, inside = topo.gateway_client_ip, f"{topo.gateway_client_ip.rsplit('.', 1)[0]}.0/24"
    options = {
        ("web", "enabled"): "true",
        ("web", "mode"): '"transparent"',
        ("web", "listen_host"): json.dumps(gw),
        ("web", "listen_port"): str(PROXY_PORT),
        ("web", "upstream_ca_file"): json.dumps(str(server_ca)),
        ("smtp", "enabled"): "true",
        ("smtp", "listen_host"): json.dumps(gw),
        ("smtp", "listen_port"): "25",
        ("smtp", "allowed_clients"): json.dumps([inside]),
        ("smtp", "upstream_host"): json.dumps(topo.server_ip),
        ("smtp", "upstream_port"): "25",
        ("smtp", "upstream_starttls"): '"optional"',
        ("smtp", "retry_initial_seconds"): "1",
        ("smtp", "retry_max_seconds"): "2",
        ("capture", "interfaces"): '["g-c"]',
        ("capture", "internal_networks"): json.dumps([inside]),
        ("gateway", "inside_interface"): '"g-c"',
        ("gateway", "inside_networks"): json.dumps([inside]),
        ("housekeeping", "enabled"): "false",
    }
    for (section, key), value in options.items():
        set_option(lbm.data_dir, section, key, value)
    subject_ip, other_ip = topo.client_ips
    feed = tmp / "identity-feed.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        f"{SUBJECT},ip,{subject_ip},2000-01-01T00:00:00Z,\n"
        f"{OTHER},ip,{other_ip},2000-01-01T00:00:00Z,\n"
        f"{SUBJECT},email,{SUBJECT_ADDR},,\n"
        f"{OTHER},email,{OTHER_ADDR},,\n"
    )
    lbm("identity", "import", str(feed), check=True)
    identity = tmp / "inv1.key"
    identity.write_text(investigator(lbm))
    identity.chmod(0o600)
    lbm.grant(REF, SUBJECT, extra=("--channel", "email", "--channel", "packets"))
    return str(identity)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e")
    lbm = Lbm(tmp / "data")
    lbm("init", check=True)
    config = lbm.data_dir / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    with gateway_topology("lbme2e") as topo, scripts() as servers:
        subject_ip, other_ip = topo.client_ips
        ca = TestCA(tmp / "server-ca")
        cert, key = ca.issue([HOST], stem="server")
        servers.append(start_script(topo, topo.server, WEB_SERVER, topo.server_ip, str(cert),
                                    str(key)))  # fmt: skip
        identity = _configure(lbm, topo, tmp, ca.ca_file)
        env = {k: v for k, v in lbm.env.items() if k != "LBM_FAKE_NOW"}
        logs = tmp / "logs"
        logs.mkdir()
        run = LbmRun(topo, lbm.data_dir, logs, env, ("proxy", "smtp", "capture-g-c"))
        try:
            run.start()
            # TCP 80/443 from g-c to the proxy, QUIC dropped
            gateway_rules(lbm.data_dir, topo, "--apply")
            ours = proxy_ca(lbm.data_dir)
            # before the restart: web from both, mail from both while the internet's MTA is down
            assert _curl(topo, subject_ip, f"https://{HOST}/{MARK}-tls", "--cacert", str(ours))
            assert _curl(topo, subject_ip, f"http://{HOST}/{MARK}-plain")
            assert _curl(topo, other_ip, f"https://{HOST}/{CANARY}-tls", "--cacert",
                         str(ca.ca_file)) == f"hello /{CANARY}-tls"  # fmt: skip
            assert _curl(topo, other_ip, f"http://{HOST}/{CANARY}-plain")
            subject_sha = peer_cert(topo, subject_ip, HOST, ours)
            other_sha = peer_cert(topo, other_ip, HOST, ca.ca_file)
            send_mail(topo, subject_ip, SUBJECT_ADDR, OUTSIDE_ADDR, f"{MARK}-mail")
            send_mail(topo, other_ip, OTHER_ADDR, OUTSIDE_ADDR, f"{CANARY}-mail")
            # mid-traffic: a loop of web and mail from both users runs across stop and start
            users = [(subject_ip, SUBJECT_ADDR, MARK), (other_ip, OTHER_ADDR, CANARY)]
            loop = TrafficLoop(topo, users, HOST, OUTSIDE_ADDR)
            loop.wait_ok(2)
            stopped_at = datetime.now(UTC)
            assert run.stop() == 0
            spooled = len([p for p in spool_entries(lbm.data_dir) if p.suffix == ".msg"])
            # the internet's MTA comes up; lbm run starts again and delivers what it accepted
            box = tmp / "mailbox"
            box.mkdir()
            servers.append(start_script(topo, topo.server, SMTP_SERVER, topo.server_ip, str(box)))
            run.start()
            loop.wait_ok(2)
            events = loop.finish()
            assert _curl(topo, subject_ip, f"https://{HOST}/{MARK}-after", "--cacert", str(ours))
            assert _curl(topo, other_ip, f"http://{HOST}/{CANARY}-after")
            accepted = sum(1 for e in events if e["kind"] == "mail" and e["ok"])
            wait_until(lambda: len(mailbox(box)) >= 2 + accepted, 40, "accepted mail delivered")
            # a subject's delivered message stays spooled until its segment closes (60 s or the
            # stop); everyone else's leaves the spool once delivered
            wait_until(lambda: undelivered(lbm.data_dir) == 0, 20, "the spool to drain")
            time.sleep(1.5)  # the relay's `delivered` rows: durable within a second
        finally:
            code = run.stop()
        assert code == 0, run.output()[-4000:]
        export = tmp / "export"
        lbm("archive", "export-raw", REF, "--identity", identity, "--out", str(export),
            check=True)  # fmt: skip
        yield World(topo, lbm.data_dir, run, subject_ip, other_ip, TestCA.fingerprint(cert),
                    subject_sha, other_sha, spooled, stopped_at, events, mailbox(box),
                    export)  # fmt: skip


def test_metadata_for_both_users_in_web_email_and_flow(world: World) -> None:
    web = world.rows("web")
    by_ip: dict[str, set[tuple[str | None, str]]] = {}
    for row in web:
        by_ip.setdefault(row["client_ip"], set()).add((row["principal"], row["decision"]))
    assert (SUBJECT, "intercepted") in by_ip[world.subject_ip]
    assert (OTHER, "passed") in by_ip[world.other_ip]
    assert {p for p, _ in by_ip[world.subject_ip] | by_ip[world.other_ip]} == {SUBJECT, OTHER}
    assert all(r["refs"] == [] and r["record_ids"] == [] for r in web if r["principal"] == OTHER)
    assert any(r["refs"] == [REF] and r["record_ids"] for r in web if r["principal"] == SUBJECT)

    email = world.rows("email")
    outcomes = {(r["principal"], r["outcome"]) for r in email}
    for who in (SUBJECT, OTHER):
        assert {(who, "queued"), (who, "delivered")} <= outcomes, outcomes
    assert all(r["refs"] == [] for r in email if r["principal"] == OTHER)
    assert any(r["refs"] == [REF] for r in email if r["principal"] == SUBJECT)

    flow = world.rows("flow")
    for ip in (world.subject_ip, world.other_ip):
        mine = [r for r in flow if r["client_ip"] == ip]
        assert {(r["server_port"], r["service"]) for r in mine} >= {(443, "ssl"), (80, "http")}, (
            mine
        )
        assert any(r["server_name"] == HOST for r in mine if r["server_port"] == 443)
        assert any(r["server_port"] == 25 for r in mine)
    assert all(r["refs"] == [] for r in flow if r["client_ip"] == world.other_ip)
    assert any(r["refs"] == [REF] for r in flow if r["client_ip"] == world.subject_ip)


def test_full_content_for_the_subject_only(world: World, tmp_path: Path) -> None:
    records = world.exported()
    assert all(meta["complete"] for meta, _ in records)
    channels = {meta["channel"] for meta, _ in records}
    assert channels == {"web", "email", "packets"}, channels
    web = b"".join(data for meta, data in records if meta["channel"] == "web")
    for path in ("tls", "plain", "after"):
        assert f"/{MARK}-{path}".encode() in web
    mails = [d for meta, d in records if meta["channel"] == "email" and meta["kind"] == "message"]
    (mail,) = [m for m in mails if f"{MARK}-mail".encode() in m]
    (delivered,) = [raw for _, raw in world.mailbox if f"{MARK}-mail".encode() in raw]
    assert delivered.endswith(mail)  # byte-exact: the upstream got it, plus a Received: line
    # every message of the subject's answered 250 in the traffic loop is archived; no other
    archived = {subject_of(m) for m in mails}
    subject_loop = {e["tag"] for e in world.loop
                    if e["kind"] == "mail" and e["ok"] and e["ip"] == world.subject_ip}  # fmt: skip
    assert subject_loop and subject_loop <= archived
    assert archived <= subject_loop | {f"{MARK}-mail"}
    pcaps = sorted((world.export / REF).rglob("*.pcapng"))
    assert pcaps
    merged = tmp_path / "subject.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), *map(str, pcaps)], check=True, timeout=60)
    fields = subprocess.run(
        ["tshark", "-r", str(merged), "-T", "fields", "-e", "ip.src", "-e", "ip.dst",
         "-e", "http.request.uri"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"/{MARK}-plain" in fields
    hosts = {h for line in fields.splitlines() for h in line.split("\t")[:2]}
    assert world.subject_ip in hosts and world.other_ip not in hosts
    for _, data in records:
        assert CANARY.encode() not in data


def test_non_subject_tls_passes_through_untouched(world: World) -> None:
    assert world.other_seen_sha == world.server_sha  # the server's own certificate
    assert world.subject_seen_sha != world.server_sha  # the subject's is intercepted


def test_privacy_canary_nowhere_in_the_data_dir_or_daemon_output(world: World) -> None:
    # the non-subject's mail reached the internet's MTA with its canary...
    assert any(CANARY.encode() in raw for _, raw in world.mailbox)
    # ...and nothing the gateway keeps or prints holds it (spool drained, archives, metadata)
    canary = CANARY.encode()
    for path in world.data_dir.rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path
    output = world.run.output()
    assert b"started proxy" in output and b"started capture-g-c" in output
    assert canary not in output


def test_restarting_lbm_run_mid_traffic_loses_nothing_accepted(world: World) -> None:
    assert world.run.codes == [0, 0]
    mail = [e for e in world.loop if e["kind"] == "mail"]
    oks = [e["ok"] for e in mail]
    first_down, last_down = oks.index(False), len(oks) - 1 - oks[::-1].index(False)
    assert any(oks[:first_down]) and any(oks[last_down:])  # up, down (the restart), up again
    # every message answered 250 reached the internet's MTA exactly once, in the end
    subjects = [subject_of(raw) for _, raw in world.mailbox]
    for event in mail:
        if event["ok"]:
            assert subjects.count(event["tag"]) == 1, event
    assert sorted(e["from"] for e, raw in world.mailbox if b"loop-mail" not in raw) == sorted(
        [SUBJECT_ADDR, OTHER_ADDR]
    )
    assert world.spooled_at_stop >= 2  # accepted mail waited in the spool across the stop
    # every web request answered 200 has its metadata row, before and after the restart
    rows = world.rows("web")
    # (besides the loop: the subject's -plain request, the other's -plain and -after)
    for ip, curled in ((world.subject_ip, 1), (world.other_ip, 2)):
        served = sum(1 for e in world.loop if e["kind"] == "web" and e["ok"] and e["ip"] == ip)
        plain = [r for r in rows if r["client_ip"] == ip and r["server_port"] == 80]
        assert served and len(plain) >= served + curled, (ip, len(plain), served)
    for stream in ("web", "flow"):  # rows written before the stop survived it
        before = {r["client_ip"] for r in world.rows(stream) if r["ts"] < world.stopped_at}
        assert {world.subject_ip, world.other_ip} <= before, stream


def test_audit_log_intact_across_restarts_records_rules_and_counts_only(world: World) -> None:
    check = Lbm(world.data_dir)("audit", "verify")
    assert check.returncode == 0, check.stdout + check.stderr
    entries = [
        json.loads(line)
        for line in (world.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    actions = [e.get("action") for e in entries]
    assert "gateway_rules_apply" in actions
    text = json.dumps(entries)
    # the audit log records what was done, never the non-subject's traffic or addresses
    assert CANARY not in text and OTHER_ADDR not in text and world.other_ip not in text

"""The simulated network of the end-to-end test (tests/e2e, issue 17): three namespaces from
`tests/support/netns.py` (`gateway_topology`): the force's clients, the gateway running `lbm run`,
and the internet holding a real HTTP/HTTPS server and a real SMTP server (aiosmtpd) that writes
every message it accepts to a directory. Servers are small scripts run with `ip netns exec`,
stopped by their PID at teardown. `LbmRun` is a restartable `lbm run` in the gateway namespace;
`TrafficLoop` sends web and mail from two users until told to stop, recording each outcome; the
client helpers (`send_mail`; `peer_cert` is in netns.py) run in the client namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbm_testing import REPO
from mail_relay import spool_entries
from netns import Topology

SMTP_SERVER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from aiosmtpd.smtp import SMTP
    ip, out = sys.argv[1], sys.argv[2]

    class H:
        async def handle_DATA(self, server, session, envelope):
            n = len([p for p in os.listdir(out) if p.endswith(".eml")])
            path = os.path.join(out, "%04d" % n)
            with open(path + ".json", "w") as f:
                json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos}, f)
            with open(path + ".tmp", "wb") as f:
                f.write(envelope.original_content)
            os.replace(path + ".tmp", path + ".eml")
            return "250 2.0.0 OK"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(H()), ip, 25)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())
    """
)


def start_script(topo: Topology, ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    """Run `script` in namespace `ns`; returns once it printed `ready`."""
    proc = subprocess.Popen(
        [*topo.exec(ns), sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"server script did not start: {err}")
    return proc


def stop_script(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@dataclass
class LbmRun:
    """`lbm run` in the gateway namespace, restartable; its output goes to files in `log_dir`."""

    topo: Topology
    data_dir: Path
    log_dir: Path
    env: dict[str, str]
    expect: tuple[str, ...]  # daemon names whose run/NAME.ready must appear
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    codes: list[int] = field(default_factory=list)

    def start(self, timeout: float = 45) -> None:
        run = self.data_dir / "run"
        for name in self.expect:
            with contextlib.suppress(FileNotFoundError):
                (run / f"{name}.ready").unlink()
        self.starts += 1
        out = (self.log_dir / f"run-{self.starts}.out").open("wb")
        err = (self.log_dir / f"run-{self.starts}.err").open("wb")
        with out, err:
            self.proc = subprocess.Popen(
                [*self.topo.exec(self.topo.gateway), sys.executable, "-m", "appliance.cli.main",
                 "--data-dir", str(self.data_dir), "run"],
                cwd=REPO, env=self.env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not all((run / f"{name}.ready").exists() for name in self.expect):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"lbm run did not get ready:\n{self.output()[-4000:]!r}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: lbm run and its daemons
            proc.wait()
            raise AssertionError(f"lbm run did not stop within {timeout:.0f} s") from None
        self.codes.append(code)
        return code

    def output(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(self.log_dir.glob("run-*")))


@contextlib.contextmanager
def scripts() -> Iterator[list[subprocess.Popen[str]]]:
    """Collects started server scripts and stops each at exit."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop_script(proc)


TRAFFIC_LOOP = textwrap.dedent(
    """
    import http.client, json, select, smtplib, sys, time
    users = [(sys.argv[1], sys.argv[2], sys.argv[3]), (sys.argv[4], sys.argv[5], sys.argv[6])]
    gateway, server, host, rcpt = sys.argv[7:11]
    i = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        i += 1
        ip, sender, extra = users[i % 2]
        try:
            c = http.client.HTTPConnection(server, 80, timeout=5, source_address=(ip, 0))
            c.request("GET", "/loop-%d" % i, headers={"Host": host})
            ok = c.getresponse().status == 200
            c.close()
        except OSError:
            ok = False
        print(json.dumps({"i": i, "ip": ip, "kind": "web", "ok": ok}), flush=True)
        tag = "loop-mail-%d" % i
        try:
            with smtplib.SMTP(gateway, 25, source_address=(ip, 0), timeout=10) as s:
                s.sendmail(sender, [rcpt], ("Subject: %s\\r\\n\\r\\n%s %s\\r\\n"
                                            % (tag, tag, extra)).encode())
            ok = True
        except (OSError, smtplib.SMTPException):
            ok = False
        print(json.dumps({"i": i, "ip": ip, "kind": "mail", "tag": tag, "ok": ok}), flush=True)
        time.sleep(0.3)
    """
)


class TrafficLoop:
    """Web (plain HTTP) and mail from two users, alternately, until `finish()`; each attempt's
    outcome is an event dict (`kind` web|mail, `ip`, `ok`, mail `tag`), collected live."""

    def __init__(self, topo: Topology, users: list[tuple[str, str, str]], host: str,
                 rcpt: str) -> None:  # fmt: skip
        args = [str(x) for user in users for x in user]
        self.proc = subprocess.Popen(
            [*topo.exec(topo.client), sys.executable, "-c", TRAFFIC_LOOP, *args,
             topo.gateway_client_ip, topo.server_ip, host, rcpt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def wait_ok(self, count: int, timeout: float = 30) -> None:
        """Until `count` more mail attempts have been accepted."""
        target = self.oks("mail") + count
        deadline = time.monotonic() + timeout
        while self.oks("mail") < target:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"traffic loop: {self.events[-6:]}"
            time.sleep(0.05)

    def oks(self, kind: str) -> int:
        return sum(1 for e in list(self.events) if e["kind"] == kind and e["ok"])

    def finish(self) -> list[dict[str, object]]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        return list(self.events)


MAIL_CLIENT = textwrap.dedent(
    """
    import smtplib, sys
    src, dst, sender, rcpt, text = sys.argv[1:6]
    msg = ("From: <%s>\\r\\nTo: <%s>\\r\\nSubject: %s\\r\\n\\r\\n%s\\r\\n"
           % (sender, rcpt, text, text)).encode()
    with smtplib.SMTP(dst, 25, source_address=(src, 0), timeout=20) as s:
        refused = s.sendmail(sender, [rcpt], msg)
    print("accepted" if not refused else "refused")
    """
)


def send_mail(topo: Topology, src: str, sender: str, rcpt: str, text: str) -> None:
    out = subprocess.run(
        [*topo.exec(topo.client), sys.executable, "-c", MAIL_CLIENT, src,
         topo.gateway_client_ip, sender, rcpt, text],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip
    assert out.stdout.strip() == "accepted", out.stderr


def undelivered(data_dir: Path) -> int:
    """Spooled messages with recipients still to deliver (or not yet written in full)."""
    count = 0
    for msg in spool_entries(data_dir):
        if msg.suffix == ".msg":
            meta = msg.with_suffix(".json")
            count += not meta.exists() or bool(json.loads(meta.read_text())["pending"])
    return count


def gateway_rules(data_dir: Path, topo: Topology, *args: str) -> str:
    """`lbm gateway rules ARGS` run in the gateway namespace (nftables is per namespace)."""
    out = subprocess.run(
        [*topo.exec(topo.gateway), sys.executable, "-m", "appliance.cli.main", "--data-dir",
         str(data_dir), "gateway", "rules", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def mailbox(directory: Path) -> list[tuple[dict[str, Any], bytes]]:
    return [
        (json.loads(p.with_suffix(".json").read_text()), p.read_bytes())
        for p in sorted(directory.glob("*.eml"))
    ]


def subject_of(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    return ""

"""The end-to-end mail tests' relay: a real `lbm smtp run` subprocess (port 0, the real port read
from `run/smtp.port`) in a data dir made by `lbm init`, delivering to a `RecordingUpstream` (a real
aiosmtpd server in the test process). `tests/mail/conftest.py` turns these into fixtures.

`prepare` readies the data dir: identity rows for the addresses below, an investigator `inv1`
whose age identity the test holds, an `email` grant `REF` for `SUBJECT`, and `[smtp]` pointed at
the upstream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbm_testing import REPO, Lbm
from smtp_upstream import RecordingUpstream

from store import agefile as age

REF = "mail-e2e-0001"
SUBJECT = "p12345"  # under an active `email` authorisation
OTHER = "p22222"  # an internal user who is not a subject
INVESTIGATOR = "p900"
SUBJECT_ADDR = "subject@force.example"
OTHER_ADDR = "other@force.example"
OUTSIDE_ADDR = "someone@elsewhere.example"  # resolves to nobody: external
SMTP_USER = "other.user"  # OTHER's login name (users file, SMTP AUTH)
IDENTITY_ROWS = [
    (SUBJECT, "email", SUBJECT_ADDR),
    (OTHER, "email", OTHER_ADDR),
    (OTHER, "username", SMTP_USER),
]


def set_option(data_dir: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (TOML literal) in `[section]` of the data dir's lbm.toml, replacing the
    line if the option is there, else adding it right after the section header."""
    config = data_dir / "lbm.toml"
    lines = config.read_text().split("\n")
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header]
    at = lines.index(header)
    end = next((j for j in range(at + 1, len(lines)) if lines[j].startswith("[")), len(lines))
    for j in range(at + 1, end):
        if lines[j].startswith(f"{key} = "):
            lines[j] = f"{key} = {value}"
            break
    else:
        lines.insert(at + 1, f"{key} = {value}")
    config.write_text("\n".join(lines))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def spool_entries(data_dir: Path) -> list[Path]:
    """Messages still in the spool (its top level: ID.msg, ID.json, envelope temp files)."""
    spool = data_dir / "spool"
    if not spool.is_dir():
        return []
    return [
        p for p in spool.iterdir() if p.is_file() and p.name.endswith((".msg", ".json", ".tmp"))
    ]


@dataclass
class Relay:
    """One `lbm smtp run` subprocess (restartable) and its upstream."""

    lbm: Lbm
    upstream: RecordingUpstream
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0
    outputs: list[Path] = field(default_factory=list)
    users_file: Path | None = None  # `[identity] users_file`, when the test set one

    @property
    def data_dir(self) -> Path:
        return self.lbm.data_dir

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self, timeout: float = 30.0) -> Relay:
        run = self.data_dir / "run"
        for name in ("smtp.port", "smtp.ready"):
            with contextlib.suppress(FileNotFoundError):
                (run / name).unlink()  # a kill -9 leaves them behind
        self.starts += 1
        out = self.log_dir / f"relay-{self.starts}.out"
        err = self.log_dir / f"relay-{self.starts}.err"
        self.outputs += [out, err]
        env = {k: v for k, v in self.lbm.env.items() if k != "LBM_FAKE_NOW"}
        with out.open("wb") as o, err.open("wb") as e:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance.cli.main",
                    "--data-dir",
                    str(self.data_dir),
                    "smtp",
                    "run",
                ],
                cwd=REPO,
                stdout=o,
                stderr=e,
                env=env,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"lbm smtp run exited {proc.returncode} before it was ready:\n"
                    + err.read_text(errors="replace")[-4000:]
                )
            return (run / "smtp.ready").exists() and (run / "smtp.port").exists()

        wait_until(ready, timeout, "run/smtp.ready")
        self.port = int((run / "smtp.port").read_text().strip())
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the relay and wait for it; returns its exit status."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"lbm smtp run did not exit within {timeout:.0f}s") from None
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> bytes:
        """Everything the relay wrote to stdout and stderr, over all its runs."""
        return b"".join(p.read_bytes() for p in self.outputs if p.exists())

    def stderr(self) -> str:
        return b"".join(
            p.read_bytes() for p in self.outputs if p.suffix == ".err" and p.exists()
        ).decode(errors="replace")

    def wait_drained(self, timeout: float = 60.0) -> None:
        """Until the spool holds no message (everything delivered or bounced)."""
        wait_until(lambda: not spool_entries(self.data_dir), timeout, "the spool to drain")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class MailDir:
    lbm: Lbm
    identity: str  # the investigator's age identity file text
    identity_file: Path

    def export(self, out: Path) -> list[tuple[dict[str, Any], bytes]]:
        """`lbm archive export-raw REF` with the investigator's identity (closed segments):
        every record's header fields and exact bytes, in archive order."""
        if not (self.lbm.data_dir / "archive" / REF).is_dir():
            return []
        self.lbm("archive", "export-raw", REF, "--identity", str(self.identity_file),
                 "--out", str(out), check=True)  # fmt: skip
        got: list[tuple[dict[str, Any], bytes]] = []
        for seg in sorted((out / REF).iterdir()):
            for line in (seg / "records.jsonl").read_text().splitlines():
                meta = json.loads(line)
                assert meta["complete"], meta
                got.append((meta, (seg / meta["file"]).read_bytes()))
        return got


def prepare(lbm: Lbm, tmp_path: Path, upstream: RecordingUpstream) -> MailDir:
    """Identity rows, investigator, the `email` grant, and `[smtp]` pointed at `upstream`."""
    feed = tmp_path / "identities.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        + "".join(f"{p},{k},{v},,\n" for p, k, v in IDENTITY_ROWS)
    )
    lbm("identity", "import", str(feed), check=True)
    secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", INVESTIGATOR, check=True)
    lbm.grant(REF, SUBJECT, channel="email")
    identity = age.identity_file_text(secret)
    ident_file = tmp_path / "inv1.key"
    ident_file.write_text(identity)
    ident_file.chmod(0o600)
    set_option(lbm.data_dir, "smtp", "upstream_host", '"127.0.0.1"')
    set_option(lbm.data_dir, "smtp", "upstream_port", str(upstream.port))
    set_option(lbm.data_dir, "smtp", "upstream_starttls", '"optional"')
    set_option(lbm.data_dir, "smtp", "retry_initial_seconds", "1")
    set_option(lbm.data_dir, "smtp", "retry_max_seconds", "2")
    return MailDir(lbm, identity, ident_file)

"""Helpers for the relay's own tests (tests/mail/test_mail_{server,relay_control,malformed,
archive}.py): a data dir made by `lbm init` with identities (email addresses and SMTP user names),
an investigator whose identity the test holds, an `email` grant for the subject, and a started
`lbm smtp run` (mail_relay.Relay) on it. These tests read what the relay spooled (`spool/ID.msg`,
`ID.json`) and archived, so by default the next hop is a closed loopback port: every delivery
attempt is deferred and the mail stays spooled (never delivered to the embedded default's
`./lbm-maildrop`). `use_upstream` points a dir at a real `RecordingUpstream` instead.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from capture_policy import records
from lbm_testing import Lbm
from mail_relay import Relay, set_option, wait_until
from smtp_upstream import RecordingUpstream

from store import agefile as age
from store.paths import DataPaths

REF = "ca1-mail-0001"
SUBJECT = "p12345"
OTHER = "p22222"
SUBJECT_ADDR = "subject@force.example"
SUBJECT_ALIAS = "the.subject@force.example"
OTHER_ADDR = "other@force.example"
OUTSIDE_ADDR = "someone@elsewhere.example"
SMTP_USER, SMTP_PASSWORD = "subjectmail", "correct horse battery"
PLAIN_USER, PLAIN_PASSWORD = "otherweb", "web only password"  # no `smtp` flag
ROWS = [
    (SUBJECT, "email", SUBJECT_ADDR),
    (SUBJECT, "alias", SUBJECT_ALIAS),
    (SUBJECT, "username", SMTP_USER),
    (OTHER, "email", OTHER_ADDR),
    (OTHER, "username", PLAIN_USER),
]


@dataclass
class RelayDir:
    lbm: Lbm
    identity: str  # the investigator's age identity text

    @property
    def data_dir(self) -> Path:
        return self.lbm.data_dir

    def set(self, section: str, key: str, value: str) -> None:
        set_option(self.data_dir, section, key, value)

    def relay(self, tmp_path: Path) -> Relay:
        # the upstream is never contacted by these tests (no delivery settings are made)
        return Relay(self.lbm, _NO_UPSTREAM, tmp_path)

    def spooled(self) -> dict[str, tuple[dict[str, Any], bytes]]:
        """Spool id -> (envelope JSON, message bytes) of every committed spool entry."""
        spool = self.data_dir / "spool"
        out = {}
        for env in sorted(spool.glob("*.json")):
            msg = env.with_suffix(".msg")
            out[env.stem] = (json.loads(env.read_text()), msg.read_bytes())
        return out

    def archived(self) -> list[Any]:
        """The subject archive's records (sealed segments), decrypted with the investigator."""
        return records(DataPaths(self.data_dir), self.identity, REF)

    def audit(self) -> list[dict[str, Any]]:
        log = self.data_dir / "audit" / "audit.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def tls_context(self) -> ssl.SSLContext:
        """A client context trusting the relay's self-signed certificate (keys/smtp.crt)."""
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "keys" / "smtp.crt"))
        return ctx


class _NoUpstream:
    port = 0


_NO_UPSTREAM: Any = _NoUpstream()


def prepare_relay_dir(
    lbm: Lbm, tmp_path: Path, *, grant: bool = True, identities: bool = True
) -> RelayDir:
    """`identities` imports ROWS; `grant` (implies identities) also adds the investigator and
    the `email` grant. Each costs `lbm` subprocesses: tests that need neither skip them."""
    secret, public = age.generate()
    if identities or grant:
        feed = tmp_path / "identities.csv"
        feed.write_text(
            "principal,kind,value,valid_from,valid_to\n"
            + "".join(f"{p},{k},{v},,\n" for p, k, v in ROWS)
        )
        lbm("identity", "import", str(feed), check=True)
    if grant:
        lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True)
        lbm.grant(REF, SUBJECT, channel="email")
    users = lbm.data_dir / "users.htpasswd"
    users.write_text(
        f"{SMTP_USER}:{_hash(SMTP_PASSWORD)}:smtp\n{PLAIN_USER}:{_hash(PLAIN_PASSWORD)}\n"
    )
    users.chmod(0o600)
    set_option(lbm.data_dir, "identity", "users_file", '"users.htpasswd"')
    set_option(lbm.data_dir, "smtp", "upstream_host", '"127.0.0.1"')
    set_option(lbm.data_dir, "smtp", "upstream_port", str(_closed_port()))
    set_option(lbm.data_dir, "smtp", "retry_initial_seconds", "60")
    return RelayDir(lbm, age.identity_file_text(secret))


def use_upstream(rd: RelayDir, upstream: RecordingUpstream) -> None:
    rd.set("smtp", "upstream_port", str(upstream.port))
    rd.set("smtp", "upstream_starttls", '"optional"')
    rd.set("smtp", "retry_initial_seconds", "1")


_RESERVED: list[socket.socket] = []


def _closed_port() -> int:
    """A loopback port that refuses connections: bound but never listening, and kept bound for
    the test session, so no other server (the relay's own port 0 included) can be given it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _RESERVED.append(s)
    return int(s.getsockname()[1])


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def wait_for_spool(rd: RelayDir, n: int, timeout: float = 10.0) -> dict[str, Any]:
    wait_until(lambda: len(rd.spooled()) >= n, timeout, f"{n} spooled messages")
    return rd.spooled()


__all__ = ["RecordingUpstream", "RelayDir", "prepare_relay_dir", "use_upstream", "wait_for_spool"]

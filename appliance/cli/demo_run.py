"""What `lbm demo` does (the command: appliance/cli/demo_cmd.py): a first look for a newcomer,
in a throwaway directory, on loopback only.

It makes a data dir with `lbm init`, registers an officer, a development investigator identity
(`lbm keys dev-identity`) mapped to the login user, and an identity feed for two users; grants
an authorisation for one of them; starts the appliance with `lbm run` (the same daemons as on a
gateway) next to a local HTTPS server and SMTP sink (appliance/cli/demo_traffic.py); sends web
and mail traffic as both users; shows both users' metadata side by side; takes the subject's
evidence out; prints where everything is. Everything it starts is stopped by PID when it ends,
fails or is interrupted (Ctrl-C, SIGTERM).

The local servers' host name is mapped with `[testing] hosts`, which is honoured only with
`[testing] fake_clock = true`: the demo's data dir enables both (the clock itself is the real
one) and says so. Never copy that configuration to a gateway.
"""

from __future__ import annotations

import smtplib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from appliance.cli.demo_steps import (
    HOST,
    INTERRUPTS,
    OTHER,
    REF,
    SUBJECT,
    DemoError,
    Step,
    evidence,
    metadata_table,
    where_table,
)
from appliance.cli.demo_traffic import DemoCA, MailSink, WebServer, fetch, send_mail
from store.actor import current_actor

READY_TIMEOUT = 40.0


def _pick_dir(directory: Path | None) -> Path:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="lbm-demo-"))
    directory = directory.absolute()
    if directory.exists() and not directory.is_dir():
        raise click.UsageError(f"--dir {directory}: exists and is not a directory")
    if directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"--dir {directory}: exists and is not empty")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def _configure(step: Step, ca: Path, sink_port: int) -> None:
    step.set_options(
        {
            ("testing", "fake_clock"): "true",  # only so that [testing] hosts is honoured
            ("testing", "hosts"): f'["{HOST}=127.0.0.1"]',
            ("web", "enabled"): "true",
            ("web", "upstream_ca_file"): f'"{ca}"',
            ("smtp", "enabled"): "true",
            ("smtp", "upstream_host"): '"127.0.0.1"',
            ("smtp", "upstream_port"): str(sink_port),
            ("smtp", "upstream_starttls"): '"optional"',
            ("smtp", "retry_initial_seconds"): "1",
            ("smtp", "retry_max_seconds"): "2",
            ("housekeeping", "enabled"): "false",
            ("audit", "syslog"): "false",
            ("smtp", "maildrop"): f'"{step.root / "maildrop"}"',
        }
    )


def _register(step: Step, root: Path) -> tuple[Path, Path]:
    """Officer, investigator identity (mapped to the login user), identity feed, the grant."""
    day_ago = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    role = "head_of_professional_standards"
    step.lbm("officer", "add", "p100", "--name", "Pat Hops", "--role", role,
             "--rank", "superintendent", "--from", day_ago)  # fmt: skip
    key = root / "investigator.key"
    public = step.lbm_json("keys", "dev-identity", "--out", str(key))["public_key"]
    ssh_key = root / "investigator_ssh"  # signs the MANIFEST.json of opened bundles
    step.run_tool("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "demo-investigator",
                  "-f", str(ssh_key))  # fmt: skip
    login = current_actor()
    step.lbm("keys", "investigator", "add", "demo-investigator", public, "--principal", "p900",
             "--login", login, "--sign-key", f"{ssh_key}.pub")  # fmt: skip
    feed = root / "identity-feed.csv"
    rows = [(SUBJECT.principal, "ip", SUBJECT.ip), (OTHER.principal, "ip", OTHER.ip),
            (SUBJECT.principal, "email", SUBJECT.address),
            (OTHER.principal, "email", OTHER.address)]  # fmt: skip
    feed.write_text(  # a lease (ip) has a validity window; an address does not
        "principal,kind,value,valid_from,valid_to\n"
        + "".join(f"{p},{k},{v},{day_ago if k == 'ip' else ''},\n" for p, k, v in rows)
    )
    step.lbm("identity", "import", str(feed))
    step.lbm("auth", "grant", "--ref", REF, "--subject", SUBJECT.principal,
             "--case-type", "officer_misconduct", "--purpose", "standards",
             "--channel", "web", "--channel", "email", "--officer", "p100",
             "--necessity", "demo: misuse of force systems alleged",
             "--proportionality", "demo: web and mail for a short period only",
             "--collateral", "demo: other users' traffic is metadata only",
             "--ripa-considered", "yes", "--investigator", "demo-investigator")  # fmt: skip
    step.say(f"  {login} acts as investigator demo-investigator (key {key})")
    return key, ssh_key


def _traffic(step: Step, web: WebServer, sink: MailSink) -> None:
    run = step.data / "run"
    proxy, relay = (int((run / f"{n}.port").read_text()) for n in ("proxy", "smtp"))
    found = sorted((step.data / "keys").rglob("mitmproxy-ca-cert.pem"))
    if not found:
        raise DemoError(f"no interception CA certificate under {step.data / 'keys'}")
    interception_ca = found[0]  # what a force installs on its desktops
    trust = [step.root / "internet" / "demo-internet-ca.pem", interception_ca]
    for user in (SUBJECT, OTHER):
        try:
            got = fetch(proxy, user.ip, HOST, web.port, f"/{user.name}/search?q=weather", trust)
        except OSError as exc:  # includes TLS failures
            raise DemoError(f"{user.name}'s web request through the proxy failed: {exc}") from None
        step.say(f"  {user.name:<6} ({user.ip}) GET https://{HOST}:{web.port}/{user.name}/... "
                 f"-> {got.status}, certificate from: {got.issuer}")  # fmt: skip
        try:
            send_mail(relay, user.ip, user.address, "someone@elsewhere.example",
                      f"demo mail from {user.name}", f"Hello from {user.name}.")  # fmt: skip
        except (OSError, smtplib.SMTPException) as exc:
            raise DemoError(f"{user.name}'s mail through the relay failed: {exc}") from None
        step.say(f"  {user.name:<6} mail {user.address} -> someone@elsewhere.example: accepted")
    deadline = time.monotonic() + 30
    while sink.messages() < 2:
        if time.monotonic() > deadline:
            raise DemoError("the relay did not deliver both messages within 30 s")
        time.sleep(0.1)
    step.say(f"  the local SMTP sink received {sink.messages()} messages")


def run_demo(directory: Path | None) -> None:
    """`lbm demo` (appliance/cli/demo_cmd.py); exits with the demo's status."""
    started = time.monotonic()
    root = _pick_dir(directory)
    step = Step(root)
    step.say(f"lbm demo in {root} (a demo: [testing] switches on, loopback only)")
    web: WebServer | None = None
    sink: MailSink | None = None
    code = 0
    with INTERRUPTS.installed():
        try:
            step.heading("1. a data dir, the local internet, officers and an investigator")
            step.lbm("init")
            step.save_allowed_signers()
            ca = DemoCA(root / "internet")
            web = WebServer(*ca.issue(HOST))
            sink = MailSink(root / "internet" / "mailbox")
            _configure(step, ca.ca_file, sink.port)
            identity, ssh_key = _register(step, root)
            step.say(f"  authorisation {REF}: {SUBJECT.name} ({SUBJECT.principal}), web and email")
            step.heading("2. the appliance (lbm run: proxy and relay)")
            step.start_run(READY_TIMEOUT)
            step.heading("3. traffic as both users")
            _traffic(step, web, sink)
            step.stop_run()
            step.heading("4. metadata: everyone gets it, only the subject's content is kept")
            step.console.print(metadata_table(step.data))
            step.heading("5. the subject's evidence")
            outcome = evidence(step, identity, ssh_key)
            step.heading("6. where everything is")
            step.console.print(where_table(step, identity, outcome))
        except KeyboardInterrupt:
            click.echo("lbm demo: interrupted; stopping what it started", err=True)
            code = 130
        except DemoError as exc:
            click.echo(f"lbm demo: error: {exc}", err=True)
            code = 1
        finally:
            with INTERRUPTS.held(deliver=False):  # a second Ctrl-C must not cut it short
                step.stop_run()
                for server in (web, sink):
                    if server is not None:
                        server.close()
    if code == 0:
        step.say(f"done in {time.monotonic() - started:.0f} s; nothing is left running")
    sys.stdout.flush()
    sys.exit(code)

"""The pieces `lbm demo` (appliance/cli/demo_cmd.py) is made of: running `lbm` commands and
`lbm run` on the demo's data dir (and stopping everything it started, by PID), the metadata
table, taking the subject's evidence out, and the map of where everything is."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from store.metadata import read_stream
from store.paths import DataPaths

HOST = "www.example.test"
REF = "demo-0001"


@dataclass(frozen=True)
class User:
    name: str
    principal: str
    ip: str
    address: str


SUBJECT = User("alice", "p1001", "127.0.0.2", "alice@force.example")
OTHER = User("bob", "p1002", "127.0.0.3", "bob@force.example")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP become KeyboardInterrupt, except inside `held()`, which
    defers them so starting or stopping a process is not cut in half. (Blocking the signals
    instead would leave them blocked in the children started meanwhile.)"""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        old = {sig: signal.signal(sig, self.handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, previous in old.items():
                signal.signal(sig, previous)

    @contextlib.contextmanager
    def held(self, *, deliver: bool = True) -> Iterator[None]:
        """Defer the signals; on leaving, raise a deferred one (unless `deliver` is false: a
        clean-up already under way)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            pending, self.pending = self.pending, None
            if deliver and pending is not None and not self.depth:
                raise KeyboardInterrupt(signal.Signals(pending).name)


INTERRUPTS = Interrupts()


class DemoError(Exception):
    """A step failed; the message says which and why."""


def _width() -> int:
    """The terminal's width, and room for the side-by-side table when not a terminal."""
    return max(shutil.get_terminal_size((160, 24)).columns, 100)


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class Step:
    root: Path
    console: Console = field(default_factory=lambda: Console(highlight=False, width=_width()))
    run_proc: subprocess.Popen[bytes] | None = None
    run_children: set[int] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run_log(self) -> Path:
        return self.root / "lbm-run.log"

    @property
    def allowed_signers(self) -> Path:
        """The gateway's allowed-signers line (`lbm status`), copied off the data dir."""
        return self.root / "gateway.allowed_signers"

    def save_allowed_signers(self) -> None:
        line = self.lbm_json("status")["allowed_signers"]
        self.allowed_signers.write_text(f"{line}\n")

    def env(self) -> dict[str, str]:
        drop = ("LBM_FAKE_NOW", "LBM_CONFIG", "LBM_DATA_DIR")
        return {k: v for k, v in os.environ.items() if k not in drop}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(self.data), *args]

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    def heading(self, text: str) -> None:
        self.console.print(f"\n[bold]{text}[/bold]")

    def lbm(self, *args: str) -> str:
        """Run `lbm ARGS` on the demo's data dir; its stdout, or DemoError with its stderr."""
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(),
                              cwd=self.root, timeout=120)  # fmt: skip
        if proc.returncode != 0:
            raise DemoError(f"lbm {' '.join(args[:3])} failed:\n{_tail(proc.stderr)}")
        return proc.stdout

    def run_tool(self, *argv: str) -> None:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except OSError as exc:
            raise DemoError(f"{argv[0]}: cannot run it ({exc.strerror})") from None
        if proc.returncode != 0:
            raise DemoError(f"{argv[0]} failed:\n{_tail(proc.stderr)}")

    def lbm_json(self, *args: str) -> dict[str, Any]:
        value = json.loads(self.lbm(*args, "--json"))
        assert isinstance(value, dict)
        return value

    def set_options(self, options: dict[tuple[str, str], str]) -> None:
        """Set `key = VALUE` (TOML text) in the sections of the data dir's lbm.toml."""
        config = self.data / "lbm.toml"
        lines = config.read_text().split("\n")
        for (section, key), value in options.items():
            at = lines.index(f"[{section}]")
            end = next((j for j in range(at + 1, len(lines)) if lines[j].startswith("[")),
                       len(lines))  # fmt: skip
            hit = [j for j in range(at + 1, end) if lines[j].startswith(f"{key} = ")]
            if hit:
                lines[hit[0]] = f"{key} = {value}"
            else:
                lines.insert(at + 1, f"{key} = {value}")
        config.write_text("\n".join(lines))

    # -- lbm run --------------------------------------------------------------------------

    def start_run(self, timeout: float) -> None:
        run = self.data / "run"
        with self.run_log.open("wb") as log, INTERRUPTS.held():  # no Ctrl-C before we know its PID
            self.run_proc = subprocess.Popen(self.argv("run"), stdout=log, stderr=log,
                                             env=self.env(), cwd=self.root,
                                             start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        names = ("proxy", "smtp")
        while not all((run / f"{n}.ready").exists() and (run / f"{n}.port").exists()
                      for n in names):  # fmt: skip
            self._note_children(self.run_proc.pid)
            if self.run_proc.poll() is not None:
                raise DemoError(f"lbm run exited:\n{_tail(self.run_log.read_text())}")
            if time.monotonic() > deadline:
                raise DemoError(f"lbm run was not ready after {timeout:.0f} s "
                                f"(log: {self.run_log})")  # fmt: skip
            time.sleep(0.1)
        self._note_children(self.run_proc.pid)
        ports = ", ".join(f"{n} on 127.0.0.1:{(run / f'{n}.port').read_text().strip()}"
                          for n in names)  # fmt: skip
        self.say(f"  lbm run (pid {self.run_proc.pid}) supervises: {ports}")

    def _note_children(self, pid: int) -> None:
        """Remember the daemons `lbm run` (PID) started, each in its own session, to stop them
        ourselves should `lbm run` fail to."""
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                self.run_children.update(int(p) for p in children.read_text().split())

    def _ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.data).encode() in cmdline

    def stop_run(self) -> None:
        """SIGTERM `lbm run` (it stops its daemons); SIGKILL whatever of ours is left."""
        proc, self.run_proc = self.run_proc, None
        if proc is None:
            return
        self._note_children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in sorted(self.run_children):
            if self._ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.run_children.clear()


# -- what the demo shows -------------------------------------------------------------------


def _row_line(stream: str, row: dict[str, Any]) -> str:
    when = row["ts"].strftime("%H:%M:%S")
    kept = f"{','.join(row['refs'])}: {len(row['record_ids'])} records"
    content = kept if row["record_ids"] else "metadata only"
    if stream == "web":
        what = f"{row['decision']} {row['server_name'] or row['host']}"
    else:
        what = f"{row['outcome']} to {row['rcpt_to']}"
    return f"{when} {stream:<5} {what}  {content}"


def metadata_table(data: Path) -> Table:
    """Both users' web and email rows, one column each."""
    paths = DataPaths(data)
    cells: dict[str, list[str]] = {SUBJECT.principal: [], OTHER.principal: []}
    for stream in ("web", "email"):
        rows = sorted(read_stream(paths, stream).to_pylist(), key=lambda r: r["ts"])
        for row in rows:
            if row["principal"] in cells:
                cells[row["principal"]].append(_row_line(stream, row))
    table = Table(title="metadata rows (data/metadata/, Parquet)", show_lines=False)
    table.add_column(f"{SUBJECT.name} ({SUBJECT.principal}): subject of {REF}", no_wrap=True)
    table.add_column(f"{OTHER.name} ({OTHER.principal}): not a subject", no_wrap=True)
    table.add_row("\n".join(cells[SUBJECT.principal]), "\n".join(cells[OTHER.principal]))
    return table


@dataclass(frozen=True)
class Evidence:
    directory: Path
    how: str


@contextlib.contextmanager
def _tool(name: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise DemoError(f"{name}: not found; install OpenSSH's client tools") from None


def _ssh_verify(allowed: Path, principal: str, message: Path) -> str:
    """Stock `ssh-keygen -Y verify` of MESSAGE.sig (namespace lbm-evidence); its answer."""
    with message.open("rb") as data, _tool("ssh-keygen"):
        check = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal,
             "-n", "lbm-evidence", "-s", f"{message}.sig"],
            stdin=data, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    if check.returncode != 0:
        raise DemoError(f"ssh-keygen -Y verify refused {message}.sig: {_tail(check.stderr)}")
    return (check.stdout.strip() or check.stderr.strip()).splitlines()[0]


def evidence(step: Step, identity: Path, sign_key: Path) -> Evidence:
    """The subject's evidence bundle (ciphertext, gateway-signed), its signature checked with
    stock `ssh-keygen -Y verify` against the gateway's allowed-signers line kept off the box,
    then opened as the investigator would on their own machine."""
    bundle = step.root / "evidence" / "bundle"
    bundle.parent.mkdir(mode=0o700, exist_ok=True)
    step.lbm("archive", "bundle", REF, "--out", str(bundle))
    files = [p for p in bundle.rglob("*") if p.is_file()]
    step.say(f"  lbm archive bundle {REF}: {len(files)} files, ciphertext and wrapped keys only")
    allowed = step.allowed_signers
    gateway = allowed.read_text().split()[0]
    answer = _ssh_verify(allowed, gateway, bundle / "BUNDLE.json")
    step.say(f"  ssh-keygen -Y verify -f {allowed.name} -I {gateway} -n lbm-evidence "
             f"-s BUNDLE.json.sig < BUNDLE.json:\n    {answer}")  # fmt: skip
    opened = step.root / "evidence" / "opened"
    step.lbm("evidence", "open", str(bundle), "--identity", str(identity), "--allowed-signers",
             str(allowed), "--sign-key", str(sign_key), "--out", str(opened),
             "--no-progress")  # fmt: skip
    plain = sorted(p for p in opened.rglob("*") if p.is_file())
    step.say(f"  lbm evidence open (the investigator's key, in memory): {len(plain)} files")
    signer = step.root / "investigator.allowed_signers"  # the key the demo registered
    public = Path(f"{sign_key}.pub").read_text().split()
    signer.write_text(f'demo-investigator namespaces="lbm-evidence" {public[0]} {public[1]}\n')
    answer = _ssh_verify(signer, "demo-investigator", opened / "MANIFEST.json")
    step.say(f"  ssh-keygen -Y verify ... -s MANIFEST.json.sig < MANIFEST.json:\n    {answer}")
    _show_opened(step, opened)
    return Evidence(opened, "lbm archive bundle + lbm evidence open")


def _show_opened(step: Step, opened: Path) -> None:
    """The subject's requests (from the HAR) and mail (from the .eml files), as archived."""
    for har in sorted(opened.rglob("*.har")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            for entry in json.loads(har.read_text())["log"]["entries"]:
                request = entry["request"]
                step.say(f"  the subject's request ({har.relative_to(opened)}): "
                         f"{request['method']} {request['url']}")  # fmt: skip
    for eml in sorted(opened.rglob("*.eml")):
        head = eml.read_bytes().split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"subject:"):
                step.say(f"  the subject's mail ({eml.relative_to(opened)}): "
                         f"{line.decode(errors='replace')}")  # fmt: skip


def where_table(step: Step, identity: Path, ev: Evidence) -> Table:
    data = step.data
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for what, where in (
        ("data dir", data),
        ("configuration", data / "lbm.toml"),
        ("audit log", data / "audit" / "audit.jsonl"),
        ("metadata", data / "metadata"),
        ("encrypted archive", data / "archive" / REF),
        ("investigator key", identity),
        ("investigator signing key", step.root / "investigator_ssh"),
        ("gateway key (off-box copy)", step.allowed_signers),
        (f"evidence ({ev.how})", ev.directory),
        ("mail the sink got", step.root / "internet" / "mailbox"),
        ("lbm run's log", step.run_log),
    ):
        table.add_row(what, str(where))
    cli = f"lbm --data-dir {data}"
    for cmd in ("audit verify", "auth list", f"archive records {REF}", "status"):
        table.add_row("try", f"{cli} {cmd}")
    table.add_row("clean up", f"rm -rf {step.root}")
    return table

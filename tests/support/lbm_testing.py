"""Test support importable from any test module (tests/support is on pytest's pythonpath).

Granting in a test: officers are registry facts, so the authorising officer must be registered
before `lbm auth grant`. `lbm(*grant_argv(REF, ...))` (or `lbm.grant(REF, ...)`) after `lbm init`
does it for you: the runner registers the standard officers it names (`OFFICERS`: HOPS p100,
ACU p110, HR p200, DUTY p300, SERGEANT p310, and any (principal, name, role, rank) tuple passed
to `grant_argv(officer=...)`) valid from 2000, once per data dir. The investigator named
(default `inv1`) must be registered too (`lbm keys investigator add` or
`store.investigators.add`). An application given with `--from-file` names its officer in the
file: call `register_officers(lbm, PRINCIPAL)` first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def corpus_root() -> Path:
    return Path(os.environ.get("LBM_CORPUS", REPO.parent / "shared" / "corpus")).resolve()


@dataclass
class Result:
    """A finished `lbm` run. `stderr` leaves out the fake-clock announcement (test data dirs
    enable the fake clock, and each command announces it once); `raw_stderr` keeps it."""

    returncode: int
    stdout: str
    stderr: str
    raw_stderr: str = ""


def _without_fake_clock_warning(stderr: str) -> str:
    from appliance.cli.app import FAKE_CLOCK_WARNING

    lines = stderr.splitlines(keepends=True)
    return "".join(line for line in lines if line.rstrip("\n") != FAKE_CLOCK_WARNING)


class Lbm:
    """Runs the real `lbm` CLI in a subprocess against one data directory.

    Officers are registry facts: before an `lbm auth` command that names `--officer P`, where P
    is one of `OFFICERS` (the standard officers, plus any officer a test passed to
    `grant_argv` as a tuple), the runner registers P in this data directory once (`lbm officer
    add P ... --from 2000-01-01T00:00:00Z`), so `lbm(*grant_argv(...))` after `lbm init` works.
    Set `auto_officers = False` to test an unregistered officer.
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.auto_officers = True
        self._registered: set[str] = set()

    def run(
        self,
        args: tuple[str, ...] | list[str],
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Result:
        cmd = [sys.executable, "-m", "appliance.cli.main", "--data-dir", str(self.data_dir), *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            input=input,
            env={**self.env, **(env or {})},
            timeout=timeout,
            cwd=REPO,
        )
        return Result(
            proc.returncode,
            proc.stdout,
            _without_fake_clock_warning(proc.stderr),
            proc.stderr,
        )

    def inproc(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        """`lbm ARGS` in this process (click's runner, no interpreter start): for the edge
        cases of a command; the paths under test still run the real CLI through `__call__`."""
        from click.testing import CliRunner

        from appliance.cli.main import cli

        out = CliRunner().invoke(
            cli, ["--data-dir", str(self.data_dir), *args], input=input, env=env
        )
        if out.exception is not None and not isinstance(out.exception, SystemExit):
            raise out.exception
        return Result(
            out.exit_code, out.stdout, _without_fake_clock_warning(out.stderr), out.stderr
        )

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Result:
        if self.auto_officers and args[:1] == ("auth",) and "--officer" in args:
            principal = args[args.index("--officer") + 1] if args[-1] != "--officer" else ""
            if principal in OFFICERS and principal not in self._registered:
                register_officers(self, principal)
        result = self.run(args, input=input, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"lbm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}"
            )
        return result

    def grant(self, ref: str, subject: str = "p12345", *, when: str | None = None,
              **options: Any) -> Result:  # fmt: skip
        """`lbm auth grant|urgent` (`grant_argv` options), failing the test if refused; `when`
        sets the fake clock (the data dir must allow it, as the `lbm` fixture's does)."""
        env = {"LBM_FAKE_NOW": when} if when else None
        return self(*grant_argv(ref, subject, **options), env=env, check=True)


# A test investigator's age recipient (no one holds its identity).
INV_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"

OfficerSpec = tuple[str, str, str, str]
"""(principal, name, role, rank), as `lbm officer add` takes them."""

HOPS: OfficerSpec = ("p100", "Pat Hops", "head_of_professional_standards", "superintendent")
ACU: OfficerSpec = ("p110", "Ann Acu", "acu_inspector", "inspector")
HR: OfficerSpec = ("p200", "Dee Hr", "director_of_hr", "staff")
DUTY: OfficerSpec = ("p300", "Ian Duty", "duty_inspector", "inspector")
SERGEANT: OfficerSpec = ("p310", "Sam Stripes", "custody_sergeant", "sergeant")
OFFICERS: dict[str, OfficerSpec] = {o[0]: o for o in (HOPS, ACU, HR, DUTY, SERGEANT)}
"""Officers the runner registers on first use; `grant_argv(officer=TUPLE)` adds to it."""
REGISTERED_FROM = "2000-01-01T00:00:00Z"


def register_officers(lbm: Lbm, *principals: str) -> None:
    """Register the named standard officers (default: all of `OFFICERS`) in `lbm`'s data
    directory, valid from 2000 so any fake-clock instant finds them. An officer already
    registered there is left as it is."""
    for principal in principals or tuple(OFFICERS):
        principal_, name, role, rank = OFFICERS[principal]
        argv = ["officer", "add", principal_, "--name", name, "--role", role, "--rank", rank,
                "--from", REGISTERED_FROM]  # fmt: skip
        result = lbm.run(argv)
        if result.returncode != 0 and "must start after" not in result.stderr:
            raise AssertionError(f"lbm {' '.join(argv)} failed:\n{result.stderr}")
        lbm._registered.add(principal_)


def grant_argv(
    ref: str,
    subject: str = "p12345",
    *,
    channel: str = "web",
    investigator: str = "inv1",
    command: str = "grant",
    purpose: str = "preventing_or_detecting_crime",
    officer: OfficerSpec | str = HOPS,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`lbm auth grant|urgent` arguments for a valid criminal-case application. `officer` is a
    principal or a (principal, name, role, rank) tuple; a tuple is remembered in `OFFICERS`, so
    `Lbm` registers that officer before the grant."""
    if isinstance(officer, tuple):
        OFFICERS.setdefault(officer[0], officer)
        principal = officer[0]
    else:
        principal = officer
    return [
        "auth", command, "--ref", ref, "--subject", subject, "--case-type", "criminal",
        "--purpose", purpose, "--channel", channel, "--officer", principal,
        "--necessity", "n", "--proportionality", "p", "--collateral", "c",
        "--ripa-considered", "yes", "--investigator", investigator, *extra,
    ]  # fmt: skip

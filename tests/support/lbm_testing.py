"""Test support importable from any test module (tests/support is on pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def corpus_root() -> Path:
    return Path(os.environ.get("LBM_CORPUS", REPO.parent / "shared" / "corpus")).resolve()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Lbm:
    """Runs the real `lbm` CLI in a subprocess against one data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
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
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"lbm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return result


# A test investigator's age recipient (no one holds its identity).
INV_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
HOPS = ("p100", "Pat Hops", "head_of_professional_standards", "superintendent")


def grant_argv(
    ref: str,
    subject: str = "p12345",
    *,
    channel: str = "web",
    investigator: str = "inv1",
    command: str = "grant",
    purpose: str = "preventing_or_detecting_crime",
    officer: tuple[str, str, str, str] = HOPS,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`lbm auth grant|urgent` arguments for a valid criminal-case application."""
    principal, name, role, rank = officer
    return [
        "auth", command, "--ref", ref, "--subject", subject, "--case-type", "criminal",
        "--purpose", purpose, "--channel", channel, "--officer", principal,
        "--officer-name", name, "--officer-role", role, "--officer-rank", rank,
        "--necessity", "n", "--proportionality", "p", "--collateral", "c",
        "--ripa-considered", "yes", "--investigator", investigator, *extra,
    ]  # fmt: skip

"""In-process `lbm` for the deployment tests' setup: the same commands as the `Lbm` runner,
without a new interpreter per call (most of a command's cost on a loaded machine). The parts
under test (rules in a namespace, daemons, unit command lines) still run as real processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lbm_testing import OFFICERS, REGISTERED_FROM, Lbm, Result, grant_argv

Inproc = Callable[..., Result]


def _invoke(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    result = Lbm(data_dir).inproc(*args, env=env)
    if result.returncode != 0:
        raise AssertionError(f"lbm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@pytest.fixture(scope="session")
def lbm_inproc() -> Inproc:
    """`lbm_inproc(DATA_DIR, *ARGS, env=...)`: run a command in this process; fails the test
    when it exits non-zero."""
    return _invoke


@pytest.fixture(scope="session")
def grant_inproc() -> Callable[..., None]:
    """`grant_inproc(DATA_DIR, REF, SUBJECT, when=ISO|None, channel=...)`: register HOPS (p100)
    and grant, in this process."""
    registered: set[Path] = set()

    def grant(data_dir: Path, ref: str, subject: str, *, when: str | None = None,
              channel: str = "web") -> None:  # fmt: skip
        env = {"LBM_FAKE_NOW": when} if when else None
        principal, name, role, rank = OFFICERS["p100"]
        if data_dir not in registered:
            _invoke(data_dir, "officer", "add", principal, "--name", name, "--role", role,
                    "--rank", rank, "--from", REGISTERED_FROM, env=env)  # fmt: skip
            registered.add(data_dir)
        _invoke(data_dir, *grant_argv(ref, subject, channel=channel), env=env)

    return grant

"""README's `lbm officer` and `lbm auth` examples run as written, in order, on a fresh data dir
(with the fake clock allowed and the two investigators the README asks for)."""

from __future__ import annotations

import re
import shlex

from lbm_testing import INV_RECIPIENT, REPO, Lbm

from store import investigators as inv_table
from store import sqlite as store_sqlite
from store.paths import DataPaths

ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")


def readme_commands() -> list[tuple[dict[str, str], list[str]]]:
    """Every `lbm officer|auth ...` line of README's ```sh blocks (continuations joined), with
    its leading VAR=value assignments as environment."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            env = {}
            while words and ASSIGNMENT.match(words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words[:1] == ["lbm"] and words[1:2] in (["officer"], ["auth"]):
                commands.append((env, words[1:]))
    return commands


def test_readme_examples_run_as_written(lbm: Lbm) -> None:
    commands = readme_commands()
    assert len(commands) >= 15 and {c[1][0] for c in commands} == {"officer", "auth"}
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    for name, principal in (("alice", "p900"), ("bob", "p901")):
        inv_table.add(conn, name, INV_RECIPIENT, principal, "2026-01-01T00:00:00Z")
    conn.close()
    lbm.auto_officers = False
    for env, argv in commands:
        result = lbm(*argv, env=env)
        assert result.returncode == 0, f"README: lbm {shlex.join(argv)}\n{result.stderr}"
    listed = lbm("auth", "list", "--all", env={"LBM_FAKE_NOW": "2030-03-21T10:00:00Z"}).stdout
    assert "CA1-2030-0042" in listed and "cancelled" in listed

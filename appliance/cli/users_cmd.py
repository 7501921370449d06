"""`lbm users add | remove | list`: the users file of proxy authentication and SMTP AUTH.

The file is `[identity] users_file` (default `users` in the data directory; format in
appliance/policy/users.py). A password is read from a prompt (twice) or, with
`--password-stdin`, from the first line of stdin: never from the command line, where `ps` and
shell history would show it. Each change is audited (`users_change`: the user name, the change
and the flags, never the hash). The daemons see a change within a second (they reload the file
on change). bcrypt cost 12; `LBM_BCRYPT_ROUNDS` lowers it for tests only, and only in a data
directory whose config allows the fake clock (`[testing] fake_clock = true`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from appliance.cli.app import EXIT_USAGE, App, emit, fail, pass_app
from appliance.policy.users import (
    DEFAULT_ROUNDS,
    FLAG_SMTP,
    UserEntry,
    UsersFile,
    UsersFileError,
    check_username,
    hash_password,
    update_users_file,
    users_file_path,
)
from store.audit import Action

ROUNDS_ENV = "LBM_BCRYPT_ROUNDS"


def _path(app: App) -> Path:
    return users_file_path(str(app.config["identity.users_file"]), app.paths.root)


def _rounds(app: App) -> int:
    raw = os.environ.get(ROUNDS_ENV)
    if not raw or not app.config.fake_clock:
        return DEFAULT_ROUNDS
    try:
        rounds = int(raw)
    except ValueError:
        fail(f"{ROUNDS_ENV}={raw[:20]!r}: not a number", EXIT_USAGE)
    if not 4 <= rounds <= 31:
        fail(f"{ROUNDS_ENV}={rounds}: out of range 4-31", EXIT_USAGE)
    return rounds


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        return password[:-1] if password.endswith("\r") else password
    value: str = click.prompt(
        "Password", hide_input=True, confirmation_prompt=True, err=True, show_default=False
    )
    return value


@click.group("users")
def users() -> None:
    """Proxy and SMTP AUTH users (the users file, bcrypt)."""


@users.command("add")
@click.argument("name")
@click.option("--smtp", is_flag=True, help="allow relaying mail with SMTP AUTH")
@click.option("--password-stdin", is_flag=True, help="read the password from the first stdin line")
@click.option("--replace", is_flag=True, help="replace an existing user's password and flags")
@pass_app
def add(app: App, name: str, smtp: bool, password_stdin: bool, replace: bool) -> None:
    """Add user NAME (an id: lower case, digits, . _ -), asking for a password."""
    app.require_initialised()
    try:
        check_username(name)
    except UsersFileError as exc:
        fail(str(exc), EXIT_USAGE)
    path = _path(app)
    rounds = _rounds(app)
    password = _read_password(password_stdin)
    try:
        entry = UserEntry(
            name, hash_password(password, rounds), frozenset({FLAG_SMTP}) if smtp else frozenset()
        )
    except UsersFileError as exc:
        fail(str(exc), EXIT_USAGE)
    del password
    existed: list[bool] = []

    def change(current: UsersFile) -> UsersFile:
        existed.append(name in current)
        if name in current and not replace:
            raise UsersFileError(f"user {name!r} exists already (use --replace to change it)")
        return current.with_user(entry)

    try:
        update_users_file(path, change)
    except UsersFileError as exc:
        fail(str(exc))
    action = "replace" if existed and existed[0] else "add"
    app.audit.append(
        Action.USERS_CHANGE, app.actor, user=name, change=action, flags=sorted(entry.flags)
    )
    click.echo(f"user {name}: {'replaced' if action == 'replace' else 'added'} in {path}")


@users.command("remove")
@click.argument("name")
@pass_app
def remove(app: App, name: str) -> None:
    """Remove user NAME: proxy and SMTP AUTH refuse it within a second."""
    app.require_initialised()
    path = _path(app)
    if not path.exists():
        fail(f"{path}: no users file (no user {name!r})")
    try:
        update_users_file(path, lambda current: current.without_user(name))
    except UsersFileError as exc:
        fail(str(exc))
    app.audit.append(Action.USERS_CHANGE, app.actor, user=name, change="remove")
    click.echo(f"user {name}: removed from {path}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the users as JSON")
@pass_app
def list_cmd(app: App, as_json: bool) -> None:
    """List users and their flags (never their hashes)."""
    app.require_initialised()
    path = _path(app)
    try:
        current = UsersFile.load(path) if path.exists() else UsersFile({}, path)
    except UsersFileError as exc:
        fail(str(exc))
    rows = [{"user": name, "flags": sorted(current.flags(name))} for name in current.users()]
    lines = [f"{r['user']}\t{','.join(r['flags']) or '-'}" for r in rows]
    emit({"file": str(path), "users": rows}, as_json, "\n".join(lines) if lines else "(no users)")

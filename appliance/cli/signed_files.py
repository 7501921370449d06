"""Files of signed acts on the command line: the file as signed and its detached signature.

`lbm auth` (CA1 applications; ratify, renew and review statements) and `lbm officer` (register
changes) share the `--statement`/`--signature` pair and the way the files are read: once, as
regular files only (a FIFO or device is refused at once instead of hanging), so what is checked
is exactly what is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance.policy import InvalidInput, RuleViolation
from appliance.policy.officer_signatures import Signed
from store import safefile

F = TypeVar("F", bound=Callable[..., Any])
MAX_SIGNED_BYTES = 1024 * 1024


def signed_options(statement_help: str, signature_help: str) -> Callable[[F], F]:
    """The `--statement FILE` and `--signature FILE` options."""

    def wrap(fn: F) -> F:
        path = click.Path(dir_okay=False, path_type=Path)
        fn = click.option("--signature", type=path, help=signature_help)(fn)
        return click.option("--statement", type=path, help=statement_help)(fn)

    return wrap


def read_file(path: Path, what: str) -> bytes:
    """A regular file's bytes, or InvalidInput naming the path and the problem."""
    try:
        return safefile.read_regular(path, what, MAX_SIGNED_BYTES)
    except safefile.UnsafeFileError as exc:
        raise InvalidInput(str(exc)) from None


def read_signed(
    signed_file: Path | None, signature: Path | None, option: str, signer: str
) -> Signed | None:
    """The bytes of `signed_file` (given as `option`) and the signature over them, or None when
    neither is given; one without the other is an error."""
    if signature is None:
        if signed_file is not None and option == "--statement":
            raise InvalidInput(f"--statement needs --signature ({signer}'s SSHSIG over it)")
        return None
    if signed_file is None:
        raise InvalidInput(f"--signature needs {option} (the signed file)")
    return Signed(read_file(signed_file, f"{option} file"), read_file(signature, "signature"))


def register_signers(configured: str) -> tuple[str, str]:
    """The text and path of the `[policy] register_signers` allowed-signers file, or
    RuleViolation when none is configured or it cannot be read."""
    if not configured:
        raise RuleViolation("no [policy] register_signers file is configured")
    try:
        text = read_file(Path(configured), "[policy] register_signers file").decode()
    except (InvalidInput, UnicodeDecodeError) as exc:
        raise RuleViolation(
            f"[policy] register_signers {configured}: cannot read ({exc})"
        ) from None
    return text, configured

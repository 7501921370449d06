"""OpenSSH allowed-signers files (ssh-keygen(1), "ALLOWED SIGNERS"), read strictly.

One line: `PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]`. Principals are a comma-separated pattern
list (`*`, `?`, `!` negation, as OpenSSH's match.c), optionally in double quotes. Options:
`namespaces="LIST"`, `valid-after="TIME"`, `valid-before="TIME"`, with TIME `YYYYMMDD[HHMM[SS]]`
and an optional `Z`. Deviations from ssh-keygen, all failing closed: every time is taken as UTC
(the appliance runs on UTC; ssh-keygen reads a time without `Z` as local time); `cert-authority`
lines and key types lbm cannot verify are refused with the file and line, not skipped silently.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from store.sshsig_wire import SshsigError, blob_line, parse_key_line, show

_KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@._-]+")
_OPTION_NAME = re.compile(r"[A-Za-z-]+")
_TIME = re.compile(r"(\d{8}|\d{12}|\d{14})(z|utc)?", re.IGNORECASE)
_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
_PATTERN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed-signers file. `public_key` is the canonical `TYPE BASE64`;
    `namespaces` None means any namespace; the validity bounds are UTC and, as in ssh-keygen,
    inclusive."""

    principals: tuple[str, ...]
    public_key: str
    namespaces: tuple[str, ...] | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None

    def valid_at(self, at: datetime) -> bool:
        if self.valid_after is not None and at < self.valid_after:
            return False
        return self.valid_before is None or at <= self.valid_before


@functools.lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def match_list(value: str, patterns: tuple[str, ...]) -> bool:
    """OpenSSH's match_pattern_list: some pattern matches and no negated (`!`) pattern does."""
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).fullmatch(value):
            if negated:
                return False
            positive = True
    return positive


def _pattern_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(text.split(","))
    if not all(_PATTERN.fullmatch(item) and item != "!" for item in items):
        raise SshsigError(f"{what}: empty or unprintable entry in the list")
    return items


def _time(text: str, what: str) -> datetime:
    match = _TIME.fullmatch(text)
    if match is None:
        raise SshsigError(f"{what}: time {show(text)} is not YYYYMMDD[HHMM[SS]][Z]")
    digits = match.group(1)
    try:
        value = datetime.strptime(digits, _TIME_FORMATS[len(digits)])
    except ValueError:
        raise SshsigError(f"{what}: time {show(text)} is not a valid date") from None
    return value.replace(tzinfo=UTC)


def _split_options(text: str, what: str) -> dict[str, str | None]:
    """`name[="value"],...` into {lowercase name: value}; a value may hold `\\"`."""
    options: dict[str, str | None] = {}
    pos = 0
    while True:
        match = _OPTION_NAME.match(text, pos)
        if match is None:
            raise SshsigError(f"{what}: malformed options")
        name = match.group().lower()
        pos = match.end()
        value: str | None = None
        if text.startswith("=", pos):
            if not text.startswith('"', pos + 1):
                raise SshsigError(f"{what}: option {name} needs a quoted value")
            pos += 2
            chars: list[str] = []
            while pos < len(text) and text[pos] != '"':
                if text.startswith('\\"', pos):
                    pos += 1
                chars.append(text[pos])
                pos += 1
            if pos >= len(text):
                raise SshsigError(f"{what}: option {name} has no closing quote")
            pos += 1
            value = "".join(chars)
        if name in options:
            raise SshsigError(f"{what}: option {name} given twice")
        options[name] = value
        if pos == len(text):
            return options
        if text[pos] != ",":
            raise SshsigError(f"{what}: malformed options")
        pos += 1


def _options_token(text: str) -> tuple[str, str]:
    """Split the options field (which may hold quoted spaces) from the rest of the line."""
    quoted = False
    for i, char in enumerate(text):
        if char == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif char in " \t" and not quoted:
            return text[:i], text[i:].lstrip(" \t")
    return text, ""


def _parse_line(line: str, what: str) -> AllowedSigner | None:
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise SshsigError(f"{what}: unterminated quoted principals")
        raw_principals, rest = text[1:end], text[end + 1 :]
        if rest and rest[0] not in " \t":
            raise SshsigError(f"{what}: no space after the quoted principals")
    else:
        raw_principals, _, rest = text.replace("\t", " ").partition(" ")
    principals = _pattern_list(raw_principals, f"{what}: principals")
    rest = rest.lstrip(" \t")
    if not rest:
        raise SshsigError(f"{what}: no public key after the principals")
    options: dict[str, str | None] = {}
    first = rest.split(None, 1)[0]
    if not _KEY_TYPE.fullmatch(first):
        raw_options, rest = _options_token(rest)
        options = _split_options(raw_options, what)
    namespaces = valid_after = valid_before = None
    for name, value in options.items():
        if name == "cert-authority":
            raise SshsigError(f"{what}: cert-authority is not supported (list the signer's key)")
        if name not in ("namespaces", "valid-after", "valid-before") or value is None:
            raise SshsigError(f"{what}: unsupported option {show(name)}")
        if name == "namespaces":
            namespaces = _pattern_list(value, f"{what}: namespaces")
        elif name == "valid-after":
            valid_after = _time(value, what)
        else:
            valid_before = _time(value, what)
    if valid_after and valid_before and valid_before < valid_after:
        raise SshsigError(f"{what}: valid-before is earlier than valid-after")
    blob, _key = parse_key_line(rest, what)
    return AllowedSigner(principals, blob_line(blob), namespaces, valid_after, valid_before)


def parse_allowed_signers(text: str, where: str = "allowed_signers") -> list[AllowedSigner]:
    """Every entry of an allowed-signers file; a bad line raises `WHERE:LINE: problem`."""
    signers = []
    for number, line in enumerate(text.split("\n"), 1):
        entry = _parse_line(line, f"{where}:{number}")
        if entry is not None:
            signers.append(entry)
    return signers

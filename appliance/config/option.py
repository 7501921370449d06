"""A configuration option and the checks its values get (shared by the schema modules)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from store.bech32 import Bech32Error, parse_age_recipient

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

Validator = Callable[[Any], str | None]


MAX_ID_LENGTH = 64  # the gateway id is part of every metadata file name


def _id(value: Any) -> str | None:
    if len(value) > MAX_ID_LENGTH:
        return f"at most {MAX_ID_LENGTH} characters"
    return None if ID_RE.fullmatch(value) else "must match [a-z0-9][a-z0-9._-]* (lower case)"


def _between(low: int, high: int, unit: str = "") -> Validator:
    """An integer within [low, high]: a huge value is a typo, never a setting."""
    suffix = f" {unit}" if unit else ""

    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be {low}-{high}{suffix}"

    return check


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def _hostname(value: Any) -> str | None:
    text = str(value)
    labels = text.split(".")
    ok = 0 < len(text) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )
    if not ok or text != text.lower():
        return f"{text[:80]!r} is not a lower-case DNS host name"
    return None


def _networks(value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP network (e.g. 10.0.0.0/8)"
    return None


def _domains(value: Any) -> str | None:
    for item in value:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", item) or "." not in item:
            return f"{item!r} is not a domain name"
    return None


def _age_recipients(value: Any) -> str | None:
    for item in value:
        if not re.fullmatch(r"age1[02-9ac-hj-np-z]{58}", item):
            return f"{item!r} is not an age X25519 recipient (age1...)"
        try:
            parse_age_recipient(item)  # the Bech32 checksum and the point
        except Bech32Error as exc:
            return f"{item!r}: {exc}"
    return None


def _starttls_mode(value: Any) -> str | None:
    return None if value in ("required", "optional") else "must be required or optional"


def _host_port_or_empty(value: Any) -> str | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT (e.g. mail.example.org:25) or empty"
    return None


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    kind: type
    default: Any
    help: str
    validate: Validator | None = None
    item_type: type | None = None  # for lists
    secret: bool = False  # never shown: `lbm config show` and errors print <redacted>

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

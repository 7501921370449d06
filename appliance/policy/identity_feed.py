"""Parsing and validating identity feeds (CSV, JSON array, JSON lines); no storage, no I/O but
reading the one file.

A feed maps identifiers to principals: rows of `principal, kind, value, valid_from, valid_to`
with kind one of `principal`, `username`, `email`, `alias`, `ip` (docs/identity-feed.md).
Every row is validated on its own: a bad row becomes a `BadRow` naming its line (and, in a JSON
array, its item index) and what is wrong, and the rest of the file still parses. Only a file that
cannot be read at all, a CSV header that is wrong, or a JSON array that is not valid JSON as a
whole (a sign of a half-written file) raises `FeedError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.policy import PolicyError
from store.safefile import UnsafeFileError, read_regular

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
KINDS = ("principal", "username", "email", "alias", "ip")
COLUMNS = ("principal", "kind", "value", "valid_from", "valid_to")
REQUIRED_COLUMNS = ("principal", "kind", "value")
MAX_FEED_BYTES = 256 * 1024 * 1024
MAX_ID = 128
MAX_USERNAME = 256
MAX_EMAIL = 320
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
OPEN_END = 2**63 - 1  # valid_to of an open lease, in microseconds since the epoch


class FeedError(PolicyError):
    """The feed as a whole cannot be loaded (unreadable, bad header, invalid JSON array...)."""


@dataclass(frozen=True)
class FeedRow:
    """One valid row. `value` is normalised (emails lower case, IPs canonical); windows are
    microseconds since the epoch, UTC, [valid_from, valid_to) with OPEN_END for an open lease."""

    line: int
    principal: str
    kind: str
    value: str
    valid_from: int | None = None
    valid_to: int | None = None


@dataclass(frozen=True)
class BadRow:
    line: int
    message: str
    item: int | None = None  # index in a JSON array (0-based), else None

    def describe(self, source: str) -> str:
        where = f"{source}:{self.line}: "
        if self.item is not None:
            where += f"item {self.item}: "
        return where + self.message


@dataclass(frozen=True)
class ParsedFeed:
    path: Path
    sha256: str
    format: str  # "csv", "json" or "jsonl"
    rows: tuple[FeedRow, ...]
    bad: tuple[BadRow, ...]


# -- values -------------------------------------------------------------------------------
def to_us(value: datetime) -> int:
    """Microseconds since the epoch (exact); a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // ONE_US


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def normalise_ip(text: Any) -> str:
    """Canonical text of an IP address: IPv6 compressed and lower case, an IPv4-mapped IPv6
    address as IPv4, any zone id (`%eth0`) dropped. Raises ValueError."""
    if isinstance(text, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = text
    else:
        raw = str(text).strip()
        if raw.startswith("[") and raw.endswith("]"):
            raw = raw[1:-1]
        addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Address(addr.packed))  # drops a scope id
    return str(addr)


def normalise_email(text: str) -> str:
    """Lower case, surrounding whitespace and angle brackets removed (no +tag stripping)."""
    raw = text.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip()
    return raw.lower()


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _has_control(text: str) -> bool:
    """C0 and C1 controls, surrogates, line and paragraph separators and bidi overrides: none
    belongs in an identifier, and each could forge or hide a line where it is shown."""
    return any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI for c in text)


def _check_email(value: str) -> str | None:
    if len(value) > MAX_EMAIL:
        return f"email address longer than {MAX_EMAIL} characters"
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "@" in local or any(c.isspace() for c in value):
        return f"{value!r} is not an email address (local@domain)"
    if any(not label for label in domain.split(".")):
        return f"{value!r}: domain {domain!r} has an empty label"
    return None


def _parse_instant(field: str, text: str) -> int | str:
    """Microseconds, or an error message."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return f"{field} {text!r} is not an ISO 8601 date-time"
    if value.tzinfo is None:
        return f"{field} {text!r} has no time zone (write Z for UTC)"
    try:
        return to_us(value.astimezone(UTC))
    except OverflowError:
        return f"{field} {text!r} is out of range"


def check_row(line: int, fields: dict[str, Any]) -> FeedRow | str:
    """Validate one row given as column -> value (None or "" = empty). Returns the row or the
    message saying what is wrong."""
    clean: dict[str, str] = {}
    for name in COLUMNS:
        value = fields.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            return f"{name} must be a string, not {type(value).__name__}"
        if _has_control(value):
            return f"{name} contains control characters or bytes that are not UTF-8"
        clean[name] = value.strip()
    principal, kind, value = clean["principal"], clean["kind"].lower(), clean["value"]
    if not principal:
        return "principal is empty"
    if len(principal) > MAX_ID or not ID_RE.fullmatch(principal):
        return f"principal {principal!r}: must match [a-z0-9][a-z0-9._-]* (at most {MAX_ID})"
    if kind not in KINDS:
        return f"kind {clean['kind']!r}: must be one of {', '.join(KINDS)}"
    if kind != "ip" and (clean["valid_from"] or clean["valid_to"]):
        return "valid_from and valid_to apply to ip rows only"
    if kind == "principal":
        if value and value != principal:
            return f"a principal row's value must be empty or the principal itself, not {value!r}"
        return FeedRow(line, principal, kind, principal)
    if not value:
        return f"{kind} row has an empty value"
    if kind == "username":
        if len(value) > MAX_USERNAME or any(c.isspace() for c in value):
            return f"username {value!r}: no spaces, at most {MAX_USERNAME} characters"
        return FeedRow(line, principal, kind, value)
    if kind in ("email", "alias"):
        value = normalise_email(value)
        problem = _check_email(value)
        return problem if problem else FeedRow(line, principal, kind, value)
    try:
        address = normalise_ip(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if not clean["valid_from"]:
        return "ip row needs valid_from (ISO 8601 with a time zone)"
    start = _parse_instant("valid_from", clean["valid_from"])
    if isinstance(start, str):
        return start
    end = OPEN_END
    if clean["valid_to"]:
        parsed_end = _parse_instant("valid_to", clean["valid_to"])
        if isinstance(parsed_end, str):
            return parsed_end
        end = parsed_end
        if end <= start:
            return f"valid_to {clean['valid_to']!r} is not after valid_from {clean['valid_from']!r}"
    return FeedRow(line, principal, "ip", address, start, end)


# -- formats ------------------------------------------------------------------------------
def _parse_csv(text: str, rows: list[FeedRow], bad: list[BadRow]) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    header: list[str] | None = None
    header_line = 0
    while True:
        before = reader.line_num
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if reader.line_num == before:
                raise FeedError(f"line {before + 1}: unreadable CSV ({exc})") from exc
            if header is None:
                raise FeedError(f"line {before + 1}: unreadable CSV header ({exc})") from exc
            bad.append(BadRow(before + 1, f"unreadable CSV ({exc})"))
            continue
        start, end = before + 1, reader.line_num
        if not record or all(not f.strip() for f in record) or record[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [f.strip().lower() for f in record]
            header_line = start
            _check_header(header, header_line)
            continue
        if len(record) != len(header):
            span = f" (row spans lines {start}-{end}: unclosed quote?)" if end > start else ""
            bad.append(
                BadRow(
                    start,
                    f"expected {len(header)} fields as in the header on line "
                    f"{header_line}, found {len(record)}{span}",
                )
            )
            continue
        result = check_row(start, dict(zip(header, record, strict=True)))
        if isinstance(result, str):
            bad.append(BadRow(start, result))
        else:
            rows.append(result)
    if header is None:
        raise FeedError("no CSV header (expected principal,kind,value,valid_from,valid_to)")


def _check_header(header: list[str], line: int) -> None:
    for name in header:
        if name not in COLUMNS:
            raise FeedError(
                f"line {line}: unknown column {name!r} in the CSV header "
                f"(columns: {', '.join(COLUMNS)})"
            )
        if header.count(name) > 1:
            raise FeedError(f"line {line}: column {name!r} appears twice in the CSV header")
    for name in REQUIRED_COLUMNS:
        if name not in header:
            raise FeedError(
                f"line {line}: the CSV header lacks column {name!r} "
                f"(required: {', '.join(REQUIRED_COLUMNS)})"
            )


def _check_object(line: int, obj: Any, item: int | None) -> FeedRow | BadRow:
    if not isinstance(obj, dict):
        return BadRow(line, f"expected a JSON object, found {type(obj).__name__}", item)
    unknown = sorted(str(k) for k in obj if k not in COLUMNS)
    if unknown:
        return BadRow(line, f"unknown field {unknown[0]!r} (fields: {', '.join(COLUMNS)})", item)
    result = check_row(line, obj)
    return BadRow(line, result, item) if isinstance(result, str) else result


def _parse_json_lines(text: str, rows: list[FeedRow], bad: list[BadRow]) -> None:
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            bad.append(BadRow(number, f"not valid JSON ({getattr(exc, 'msg', exc)})"))
            continue
        result = _check_object(number, obj, None)
        (bad if isinstance(result, BadRow) else rows).append(result)  # type: ignore[arg-type]


def _parse_json_array(text: str, rows: list[FeedRow], bad: list[BadRow]) -> None:
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end() + 1  # type: ignore[union-attr]  # past "["
    line, counted, item = 1, 0, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = ws.match(text, pos).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except ValueError as exc:
                raise FeedError(
                    f"line {line_at(pos)}: item {item}: not valid JSON "
                    f"({getattr(exc, 'msg', exc)}); the whole file is refused"
                ) from exc
            result = _check_object(line_at(pos), obj, item)
            (bad if isinstance(result, BadRow) else rows).append(result)  # type: ignore[arg-type]
            item += 1
            pos = ws.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(",", pos):
                pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise FeedError(
                f"line {line_at(pos)}: expected ',' or ']' after item {item - 1}; "
                "the JSON array is incomplete or malformed, the whole file is refused"
            )
    if text[pos:].strip():
        raise FeedError(f"line {line_at(pos)}: data after the end of the JSON array")


def parse_bytes(data: bytes, path: Path) -> ParsedFeed:
    """Parse a feed's bytes; the format is sniffed from the first character that is not
    white space: `[` a JSON array, `{` JSON lines, anything else CSV."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    first = text.lstrip()[:1]
    rows: list[FeedRow] = []
    bad: list[BadRow] = []
    if first == "[":
        fmt = "json"
        _parse_json_array(text, rows, bad)
    elif first == "{":
        fmt = "jsonl"
        _parse_json_lines(text, rows, bad)
    elif not first:
        raise FeedError("the file is empty")
    else:
        fmt = "csv"
        _parse_csv(text, rows, bad)
    return ParsedFeed(path, hashlib.sha256(data).hexdigest(), fmt, tuple(rows), tuple(bad))


def read_feed(path: Path) -> ParsedFeed:
    """Read and parse a feed file. Raises FeedError naming the file for file-level problems."""
    try:  # a FIFO, socket or device is refused, never opened blocking
        data = read_regular(path, "identity feed", MAX_FEED_BYTES)
    except UnsafeFileError as exc:
        raise FeedError(str(exc)) from None
    try:
        return parse_bytes(data, path)
    except FeedError as exc:
        raise FeedError(f"{path}: {exc}") from exc

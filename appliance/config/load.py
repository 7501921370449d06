"""Load and validate the TOML configuration against the schema."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.schema import SCHEMA, SECTIONS, Option
from store.safefile import UnsafeFileError, read_regular

MAX_CONFIG_BYTES = 4 * 1024 * 1024


class ConfigError(Exception):
    """A configuration problem, worded as one line: file, key, what is wrong."""


@dataclass
class Config:
    values: dict[str, Any]
    sources: dict[str, str]
    path: Path | None = None
    missing_file: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.values[name]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def gateway_id(self) -> str:
        return str(self.values["gateway.id"])

    def identity_feed(self, data_dir: Path) -> Path | None:
        """`[identity] feed` as a path (relative to the data directory), or None if unset."""
        feed = str(self.values["identity.feed"])
        if not feed:
            return None
        path = Path(feed)
        return path if path.is_absolute() else data_dir / path

    @property
    def fake_clock(self) -> bool:
        return bool(self.values["testing.fake_clock"])


def _type_name(opt: Option) -> str:
    if opt.kind is list:
        return f"a list of {(opt.item_type or str).__name__}"
    return {bool: "true or false", int: "an integer", str: "a string"}.get(
        opt.kind, opt.kind.__name__
    )


def _check_type(opt: Option, value: Any) -> bool:
    if opt.kind is bool:
        return isinstance(value, bool)
    if opt.kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if opt.kind is list:
        item = opt.item_type or str
        return isinstance(value, list) and all(isinstance(v, item) for v in value)
    return isinstance(value, opt.kind)


MAX_STRING = 4096  # no setting needs more; a longer one is a mistake or an attack
MAX_ITEMS = 10_000


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _too_long(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_ITEMS:
        return f"at most {MAX_ITEMS} items"
    for item in items:
        if isinstance(item, str) and len(item) > MAX_STRING:
            return f"a value longer than {MAX_STRING} characters"
    return None


def defaults() -> Config:
    return Config(
        values={opt.name: opt.default for opt in SCHEMA},
        sources={opt.name: "default" for opt in SCHEMA},
    )


def load_config(path: Path, *, required: bool = False) -> Config:
    """Read `path` (or defaults if it does not exist and is not required)."""
    config = defaults()
    config.path = path
    try:  # never open() a FIFO or device: it would hang every command
        raw = read_regular(path, "configuration file", MAX_CONFIG_BYTES)
    except UnsafeFileError as exc:
        if os.path.lexists(path):
            raise ConfigError(str(exc)) from None
        if required:
            raise ConfigError(f"{path}: configuration file not found") from None
        config.missing_file = True
        return config
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    by_section: dict[str, dict[str, Option]] = {}
    for opt in SCHEMA:
        by_section.setdefault(opt.section, {})[opt.key] = opt
    for section, body in data.items():
        if section not in SECTIONS:
            known = ", ".join(sorted(SECTIONS))
            raise ConfigError(f"{path}: [{section}]: unknown section (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section}: must be a [{section}] table")
        for key, value in body.items():
            found = by_section.get(section, {}).get(key)
            if found is None:
                known = ", ".join(sorted(by_section.get(section, {})))
                raise ConfigError(f"{path}: [{section}] {key}: unknown key (known: {known})")
            opt = found
            if not _check_type(opt, value):
                raise ConfigError(
                    f"{path}: [{section}] {key}: must be {_type_name(opt)}, got "
                    + ("<redacted>" if opt.secret else _shown(value))
                )
            too_long = _too_long(value)
            if too_long:
                raise ConfigError(f"{path}: [{section}] {key}: {too_long}")
            if opt.validate is not None:
                problem = opt.validate(value)
                if problem:
                    raise ConfigError(f"{path}: [{section}] {key}: {problem}")
            config.values[opt.name] = value
            config.sources[opt.name] = str(path)
    return config


def render_default(overrides: dict[str, Any] | None = None) -> str:
    """The commented default configuration `lbm init` writes, with `overrides` (by option name,
    e.g. `gateway.id`) in place of the defaults."""
    chosen = overrides or {}
    unknown = set(chosen) - {opt.name for opt in SCHEMA}
    if unknown:
        raise ValueError(f"unknown options: {sorted(unknown)}")
    lines = [
        "# lbm-gateway configuration. Every key is optional; shown values are the defaults.",
        "# `lbm config check` validates this file; `lbm config show` prints what is in force.",
        "",
    ]
    current = None
    order = list(dict.fromkeys(opt.section for opt in SCHEMA))  # each section once, in order
    for opt in sorted(SCHEMA, key=lambda o: order.index(o.section)):
        if opt.section != current:
            if current is not None:
                lines.append("")
            current = opt.section
            lines.append(f"# {SECTIONS[opt.section]}")
            lines.append(f"[{opt.section}]")
        lines.append(f"# {opt.help}")
        lines.append(f"{opt.key} = {_toml_value(chosen.get(opt.name, opt.default))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

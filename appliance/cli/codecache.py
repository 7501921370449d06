"""Dataclass methods compiled once, not at every start of `lbm` (docs/startup.md).

`@dataclass` writes the source of each class's `__init__`, `__repr__`, `__eq__`... and compiles
it with `exec` when the class is defined: about 0.1 ms a method, 25-30 ms of a capture
replay's start-up (60 classes, 300 methods) before its first packet. Python 3.13 batches it;
3.11 compiles each one. `install()` gives the `dataclasses` module an `exec` that looks the
source text up in a cache of compiled code, kept beside the package's byte code
(`appliance/cli/__pycache__/dataclass-code.TAG.bin`, the trust of a `.pyc`), and compiles only
what it lacks. The code is what `exec` would compile from the same text, so the classes are the
same; the cache only saves the compiling.

Written at exit when something was missing and the directory is writable (never with
`PYTHONDONTWRITEBYTECODE`, as for `.pyc` files); a file that does not load (another Python, a
torn write, garbage) is ignored and replaced. `LBM_NO_CODE_CACHE=1` turns it off.
"""

from __future__ import annotations

import atexit
import dataclasses
import marshal
import os
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from typing import Any

MAX_ENTRIES = 4096  # a bound on the file (the code base has a few hundred dataclass methods)
CACHE = Path(__file__).parent / "__pycache__" / f"dataclass-code.{sys.implementation.cache_tag}.bin"

_entries: dict[str, bytes] = {}  # source text -> marshalled code (from the file, then new)
_new: dict[str, bytes] = {}  # compiled by this process, to write at exit
_installed = False


def _load(path: Path) -> dict[str, bytes]:
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(MAGIC_NUMBER):
        return {}
    try:
        table = marshal.loads(data[len(MAGIC_NUMBER) :])
    except (EOFError, ValueError, TypeError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, bytes)}


def _code(source: str) -> Any:
    blob = _entries.get(source)
    if blob is not None:
        try:
            return marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            pass
    code = compile(source, "<string>", "exec")  # what exec(source, ...) compiles
    blob = marshal.dumps(code)
    _entries[source] = blob
    _new[source] = blob
    return code


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """`exec` for the dataclasses module: compiled code from the cache when it has it."""
    if isinstance(source, str):
        source = _code(source)
    exec(source, globals, locals)


def save(path: Path = CACHE) -> bool:
    """Merge what this process compiled into the file (atomically). True if written."""
    if not _new or sys.dont_write_bytecode:
        return False
    table = _load(path)
    table.update(_new)
    if len(table) > MAX_ENTRIES:  # stale entries of older code: keep this run's
        table = dict(_new)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(MAGIC_NUMBER + marshal.dumps(table))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    _new.clear()
    return True


def install(path: Path = CACHE) -> bool:
    """Route the dataclasses module's `exec` through the cache (once; False if turned off)."""
    global _installed
    if _installed:
        return True
    if os.environ.get("LBM_NO_CODE_CACHE") == "1" or not hasattr(dataclasses, "_create_fn"):
        return False  # `_create_fn` (3.10-3.12) is the one caller of `exec` there
    _entries.update(_load(path))
    dataclasses.exec = _exec  # type: ignore[attr-defined]  # a module global shadows the builtin
    atexit.register(save, path)
    _installed = True
    return True


def build(packages: tuple[str, ...] = ("store", "appliance", "capture", "addons")) -> int:
    """Import every module of `packages` and write the cache (`make venv` runs this beside
    `compileall`, for the same reason: a hardened unit or PYTHONDONTWRITEBYTECODE never writes
    it at run time). Returns the number of cached methods."""
    import importlib
    import pkgutil

    install()
    for name in packages:
        try:
            package = importlib.import_module(name)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # a module that cannot load here is simply not cached
                print(f"codecache: skipped {info.name}: {type(exc).__name__}", file=sys.stderr)
    table = _load(CACHE)
    table.update(_new)
    if len(table) > MAX_ENTRIES:
        table = dict(_new)
    _new.clear()
    _new.update(table)
    flag, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    try:
        if not save(CACHE) and _new:
            raise SystemExit(f"codecache: cannot write {CACHE}")
    finally:
        sys.dont_write_bytecode = flag
    return len(table)


if __name__ == "__main__":
    print(f"codecache: {build()} dataclass methods in {CACHE}")

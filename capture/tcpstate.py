"""Loader for the `capture._tcpstate` C extension (Zeek's TCP state machine and the
application-head fast path, see `capture/_tcpstate_build.py`).

The extension is normally built at install (`python capture/_tcpstate_build.py`, or cffi's
`cffi_modules` in the build). A build whose embedded source hash differs from the current
source is not used: the extension is then built once into
`$XDG_CACHE_HOME/lbm-gateway/tcpstate-HASH/` (needs a C compiler, as CI has); if that is
impossible the import fails with a `CaptureError` saying so.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from capture import CaptureError
from capture import _tcpstate_build as build

# Zeek conn_state names in the order tcp_conn_state() returns them.
CONN_STATES = (
    "S0",
    "S1",
    "SF",
    "REJ",
    "S2",
    "S3",
    "RSTO",
    "RSTR",
    "RSTOS0",
    "RSTRH",
    "SH",
    "SHR",
    "OTH",
)


def _current(mod: ModuleType) -> bool:
    lib: Any = getattr(mod, "lib", None)
    ffi: Any = getattr(mod, "ffi", None)
    if lib is None or ffi is None or not hasattr(lib, "tcpstate_hash"):
        return False
    return bool(ffi.string(lib.tcpstate_hash()).decode() == build.SOURCE_HASH)


def _load_file(so: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture._tcpstate", so)
    if spec is None or spec.loader is None:
        raise CaptureError(f"capture._tcpstate: cannot load {so}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load() -> ModuleType:
    """The compiled module (with `.ffi` and `.lib`), built if needed."""
    try:
        mod = importlib.import_module("capture._tcpstate")
        if _current(mod):
            return mod
    except ImportError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "lbm-gateway" / f"tcpstate-{build.SOURCE_HASH}"
    for so in sorted(cache.glob("**/_tcpstate*.so")):
        mod = _load_file(so)
        if _current(mod):
            return mod
    try:
        cache.mkdir(parents=True, exist_ok=True)
        build.ffibuilder.compile(tmpdir=str(cache), verbose=False)
    except Exception as exc:  # compiler missing, read-only cache, ...
        raise CaptureError(
            f"capture._tcpstate C extension is not built and could not be built ({exc}); "
            "reinstall the package with a C compiler available"
        ) from exc
    for so in sorted(cache.glob("**/_tcpstate*.so")):
        mod = _load_file(so)
        if _current(mod):
            sys.modules["capture._tcpstate"] = mod
            return mod
    raise CaptureError("capture._tcpstate: built, but the module was not found")


_mod: Any = load()
ffi: Any = _mod.ffi
lib: Any = _mod.lib

"""Build and load the capture path's C extensions (cffi, out-of-line API mode), one scheme
for both of them.

- ``fastwalk`` (`_fastwalk.c`): pcap/pcapng record walking for `capture.read.walk`, which has a
  pure-Python fallback;
- ``tcpstate`` (`_tcpstate_impl.c`): Zeek's TCP state machine, the application-head scan
  the DNS scan and Community IDs for `capture.flow.table`, `capture.app.scan`, `capture.app.dnsscan`
  and `capture.flow.keys`; no fallback.

Each extension is compiled under a module name keyed by a hash of its declarations, its C
source, the compiler flags and the cffi version (``_lbm_tcpstate_<hash>``), so a stale build
is never loaded, and builds of different versions can sit side by side. Cache directories,
in order (loading takes the first that holds the build, building the first writable one):

1. ``$LBM_CAPTURE_CACHE``, if set;
2. ``<venv>/var/lbm-capture`` when running in a virtual environment: where the install step
   (``python -m capture.native.build``) puts the builds, so that a hardened service
   (ProtectHome=yes,
   ProtectSystem=strict, another user) can load them read-only;
3. ``~/.cache/lbm-gateway`` (developer checkouts without a writable venv).

What C and Python share (functions, the flow struct) is declared once, in a header per
extension (`_fastwalk.h`, `_tcpstate.h`) that the C sources include and `cdef_of` turns into
the cffi declarations. The helpers parse hostile packets, so they are built hardened
(`CFLAGS`: ``-O2 -fPIC -fstack-protector-strong -D_FORTIFY_SOURCE=2``); the sources compile
warning-free with ``-Wall -Wextra`` (a test checks it).

``LBM_CAPTURE_SANITIZE=1`` selects the AddressSanitizer + UndefinedBehaviorSanitizer build
(`SANITIZE_CFLAGS`) in its own cache directory, ``<venv>/var/lbm-capture-asan`` (after
``$LBM_CAPTURE_CACHE`` if set), so the normal builds are untouched. A Python not built with
ASan loads it only with the ASan runtime preloaded: `make asan` sets ``LD_PRELOAD`` to
``gcc -print-file-name=libasan.so`` (and libubsan) and ``ASAN_OPTIONS=detect_leaks=0``
(CPython keeps objects until exit by design), builds, and runs the capture property and corpus
tests with it.

A build compiles in a temporary directory inside the target and is renamed into place, so an
interrupted or concurrent build never leaves a half-written library under the final name.
Without a C compiler, `load` raises `CaptureError` saying so.

    python -m capture.native.build [--dest DIR]     # build both (install, CI); prints where,
                                             # and removes stale builds there
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from capture import CaptureError

_HERE = Path(__file__).resolve().parent
# The helpers parse hostile packets: hardened like a distribution's packages. -U first: a
# compiler that defines _FORTIFY_SOURCE itself would warn about the redefinition.
CFLAGS = (
    "-O2",
    "-fPIC",
    "-fstack-protector-strong",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=2",
)
# `make asan`: AddressSanitizer and UndefinedBehaviorSanitizer, any UB report fatal (so a
# test fails), frame pointers for readable reports; fortify is left out (ASan checks more).
SANITIZE_CFLAGS = (
    "-O1",
    "-g",
    "-fPIC",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-wrapv",  # Python's own CFLAGS have -fwrapv, which hides signed overflow from UBSan
)
SANITIZE_LDFLAGS = ("-fsanitize=address,undefined",)
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def cdef_of(header: str) -> str:
    """The cffi declarations in a capture/*.h header: the header minus its preprocessor
    lines (include guard, #include), keeping `#define NAME NUMBER` (cffi knows those)."""
    keep = []
    for line in (_HERE / header).read_text().splitlines():
        if line.lstrip().startswith("#") and not _DEFINE.match(line):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


_DEFINE = re.compile(r"\s*#\s*define\s+[A-Za-z_][A-Za-z0-9_]*\s+\d+\s*$")


@dataclass(frozen=True)
class Extension:
    """One C extension: the header declaring what C and Python share (its cffi cdef) and
    the C source files (in this package) that include it."""

    name: str
    header: str
    sources: tuple[str, ...]

    @property
    def cdef(self) -> str:
        return cdef_of(self.header)

    def source(self) -> str:
        return "\n".join((_HERE / s).read_text() for s in self.sources)

    def module_name(self) -> str:
        # the version of cffi's C backend, which the built module loads anyway: the same as
        # `cffi.__version__` without importing cffi's Python side (a replay's start-up)
        import _cffi_backend  # type: ignore[import-not-found,unused-ignore]

        h = hashlib.sha256()
        for part in (
            (_HERE / self.header).read_text(),
            self.source(),
            " ".join(cflags()),
            " ".join(ldflags()),
            _cffi_backend.__version__,
        ):
            h.update(part.encode())
            h.update(b"\0")
        return f"_lbm_{self.name}_{h.hexdigest()[:16]}"

    def filename(self) -> str:
        return self.module_name() + SUFFIX


FASTWALK = Extension("fastwalk", "_fastwalk.h", ("_fastwalk.c", "_mapguard.c"))
TCPSTATE = Extension(
    "tcpstate", "_tcpstate.h", ("_tcpstate_impl.c", "_dnsscan.c", "_cid.c", "_flowacct.c")
)
EXTENSIONS = (FASTWALK, TCPSTATE)


def sanitized() -> bool:
    """True when `LBM_CAPTURE_SANITIZE=1`: the ASan/UBSan build (`make asan`)."""
    return os.environ.get("LBM_CAPTURE_SANITIZE", "") not in ("", "0")


def cflags() -> tuple[str, ...]:
    """Compiler flags of the build in use (the sanitizer build when `sanitized()`)."""
    return SANITIZE_CFLAGS if sanitized() else CFLAGS


def ldflags() -> tuple[str, ...]:
    return SANITIZE_LDFLAGS if sanitized() else ()


def cache_dirs() -> list[Path]:
    """Where builds are looked for and made, in order (see the module docstring)."""
    dirs: list[Path] = []
    env = os.environ.get("LBM_CAPTURE_CACHE")
    if env:
        dirs.append(Path(env))
    if sanitized():  # never mixed with the normal builds: its own directory only
        base = Path(sys.prefix) if sys.prefix != sys.base_prefix else Path.home() / ".cache"
        return [*dirs, base / "var" / "lbm-capture-asan"]
    if sys.prefix != sys.base_prefix:
        dirs.append(Path(sys.prefix) / "var" / "lbm-capture")
    with contextlib.suppress(RuntimeError, KeyError):  # no home directory
        dirs.append(Path.home() / ".cache" / "lbm-gateway")
    return dirs


def _import(ext: Extension, so: Path) -> ModuleType:
    name = ext.module_name()
    have = sys.modules.get(name)
    if have is not None:
        return have
    spec = importlib.util.spec_from_file_location(name, so)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python extension: {so}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


def find(ext: Extension) -> Path | None:
    """The first existing build of `ext` in the cache directories, if any."""
    fn = ext.filename()
    for d in cache_dirs():
        p = d / fn
        with contextlib.suppress(OSError):
            if p.is_file():
                return p
    return None


def compiler_hint() -> str:
    import shutil

    cc = os.environ.get("CC") or "cc"
    found = shutil.which(cc.split()[0]) if cc.strip() else None
    if found is None:
        return (
            f"no C compiler found ({cc!r} is not on PATH): install build-essential and "
            "python3-dev, then run `python -m capture.native.build`"
        )
    return (
        "a C compiler and Python headers (python3-dev) are needed: "
        "run `python -m capture.native.build`"
    )


def build(ext: Extension, dest: Path) -> Path:
    """Compile `ext` into directory `dest` (temporary name, then rename); returns the path.
    Raises whatever the compiler or file system raises."""
    import shutil
    import tempfile

    import cffi  # build time only

    dest.mkdir(parents=True, exist_ok=True)
    name = ext.module_name()
    final = dest / ext.filename()
    with tempfile.TemporaryDirectory(prefix=f".{ext.name}-", dir=dest) as tmp:
        ffi = cffi.FFI()
        ffi.cdef(ext.cdef)
        ffi.set_source(
            name,
            ext.source(),
            include_dirs=[str(_HERE)],
            extra_compile_args=list(cflags()),
            extra_link_args=list(ldflags()),
        )
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        staged = Path(tmp) / (final.name + ".tmp")
        shutil.copyfile(built, staged)
        os.chmod(staged, 0o755)  # a service running as another user loads it
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, final)
    return final


def load(ext: Extension) -> ModuleType:
    """The compiled module of `ext` (with `.ffi` and `.lib`), built into the first writable
    cache directory if no usable build exists. Raises CaptureError if that is impossible."""
    so = find(ext)
    if so is not None:
        with contextlib.suppress(Exception):  # unloadable (corrupt, wrong ABI): rebuild
            return _import(ext, so)
    return install(ext)


def install(ext: Extension, dest: Path | None = None) -> ModuleType:
    """Make sure `ext` is built in `dest` (default: the first cache directory where a build
    exists or can be made) and load it. Raises CaptureError naming every place tried."""
    return _install(ext, dest)[0]


def _install(ext: Extension, dest: Path | None) -> tuple[ModuleType, Path]:
    errors: list[str] = []
    for d in [dest] if dest is not None else cache_dirs():
        p = d / ext.filename()
        try:
            if p.is_file():
                with contextlib.suppress(Exception):
                    return _import(ext, p), p
            p = build(ext, d)
            return _import(ext, p), p
        except Exception as exc:  # no compiler, read-only directory, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{d}: {type(exc).__name__} {first}"[:300])
    consequence = (
        "capture.read.walk falls back to its pure-Python record walker"
        if ext.name == "fastwalk"
        else "The flow table's TCP state machine has no pure-Python fallback: capture cannot "
        "run without it"
    )
    raise CaptureError(
        f"capture C extension {ext.name!r} is not built and could not be built "
        f"({'; '.join(errors) or 'no cache directory'}); {compiler_hint()}. {consequence}."
    )


def main(argv: list[str] | None = None) -> int:
    """Build every extension (install time, CI); prints where each one is."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m capture.native.build", description=__doc__)
    ap.add_argument("--dest", type=Path, help="build into this directory only")
    a = ap.parse_args(argv)
    status = 0
    for ext in EXTENSIONS:
        try:
            _, where = _install(ext, a.dest)
            print(f"capture.native.build: {ext.name}: {where}")
            for old in where.parent.glob(f"_lbm_{ext.name}_*{SUFFIX}"):
                if old != where:  # builds of earlier sources (a loaded one stays mapped)
                    with contextlib.suppress(OSError):
                        old.unlink()
        except CaptureError as exc:
            print(f"capture.native.build: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

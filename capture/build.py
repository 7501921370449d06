"""Build and load the capture path's C extensions (cffi, out-of-line API mode), one scheme
for both of them.

- ``fastwalk`` (`_fastwalk.c`): pcap/pcapng record walking for `capture.fastpath`, which has a
  pure-Python fallback;
- ``tcpstate`` (`_tcpstate_impl.c`): Zeek's TCP state machine, the application-head scan
  the DNS scan and Community IDs for `capture.flows`, `capture.appscan`, `capture.dnsscan`
  and `capture.flowkeys`; no fallback.

Each extension is compiled under a module name keyed by a hash of its declarations, its C
source, the compiler flags and the cffi version (``_lbm_tcpstate_<hash>``), so a stale build
is never loaded, and builds of different versions can sit side by side. Cache directories,
in order (loading takes the first that holds the build, building the first writable one):

1. ``$LBM_CAPTURE_CACHE``, if set;
2. ``<venv>/var/lbm-capture`` when running in a virtual environment: where the install step
   (``python -m capture.build``) puts the builds, so that a hardened service (ProtectHome=yes,
   ProtectSystem=strict, another user) can load them read-only;
3. ``~/.cache/lbm-gateway`` (developer checkouts without a writable venv).

A build compiles in a temporary directory inside the target and is renamed into place, so an
interrupted or concurrent build never leaves a half-written library under the final name.
Without a C compiler, `load` raises `CaptureError` saying so.

    python -m capture.build [--dest DIR]     # build both (install, CI); prints where,
                                             # and removes stale builds there
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from capture import CaptureError

_HERE = Path(__file__).resolve().parent
CFLAGS = ("-O2",)
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so

FASTWALK_CDEF = """
int64_t walk_pcap(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                  uint32_t caplimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                  uint32_t *sec, uint32_t *frac, int64_t *consumed, int *status);
int64_t walk_pcapng(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                    uint32_t blocklimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                    uint32_t *iface, uint64_t *ts, int64_t *consumed, int *status,
                    uint32_t *stop_type);
"""

TCPSTATE_CDEF = """
#define HIST_MAX 32
typedef struct {
    int64_t start[2], last[2], ack[2];
    uint64_t hist_last_syn[2], hist_last_fin[2], hist_last_rst[2];
    uint32_t fin_cnt[2], rxmt_cnt[2], rxmt_thresh[2];
    uint32_t hist_seen;
    int64_t last_ns;
    uint8_t state[2], prev_state[2], did_close[2], closed;
    uint8_t hist_len;
    char hist[HIST_MAX];
} tcpflow;

void tcp_reset(tcpflow *f, int flipped);
int64_t tcp_process(tcpflow *flows, int64_t n, const int32_t *slot, const uint8_t *is_orig,
                    const uint8_t *flags, const uint32_t *seq, const uint32_t *ack,
                    const int32_t *len, const int64_t *ts, int64_t close_delay_ns);
int64_t tcp_size(const tcpflow *f, int endpoint);
int tcp_conn_state(const tcpflow *f, int64_t orig_size, int64_t resp_size);
void tcp_reset_many(tcpflow *flows, int64_t n, const int64_t *slot, const uint8_t *flipped);
void tcp_summary(const tcpflow *flows, int64_t n, const int64_t *slot, int64_t *orig_size,
                 int64_t *resp_size, int32_t *state, char *hist, int32_t *hist_len);
void app_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
              int32_t *kind, int64_t *a_off, int32_t *a_len, int32_t *ver);
int64_t dns_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
                 int32_t *hdr, uint8_t *qname, int32_t *qname_len, int64_t max_ans,
                 int32_t *ans_type, uint32_t *ans_ttl, int32_t *ans_off, int32_t *ans_len,
                 uint8_t *text, int64_t text_cap);
void community_ids(const uint8_t *rows, int64_t n, int32_t width, char *out);
"""


@dataclass(frozen=True)
class Extension:
    """One C extension: its cffi declarations and C source files (in this package)."""

    name: str
    cdef: str
    sources: tuple[str, ...]

    def source(self) -> str:
        return "\n".join((_HERE / s).read_text() for s in self.sources)

    def module_name(self) -> str:
        import cffi  # the loader needs cffi's backend anyway

        h = hashlib.sha256()
        for part in (self.cdef, self.source(), " ".join(CFLAGS), cffi.__version__):
            h.update(part.encode())
            h.update(b"\0")
        return f"_lbm_{self.name}_{h.hexdigest()[:16]}"

    def filename(self) -> str:
        return self.module_name() + SUFFIX


FASTWALK = Extension("fastwalk", FASTWALK_CDEF, ("_fastwalk.c",))
TCPSTATE = Extension("tcpstate", TCPSTATE_CDEF, ("_tcpstate_impl.c", "_dnsscan.c", "_cid.c"))
EXTENSIONS = (FASTWALK, TCPSTATE)


def cache_dirs() -> list[Path]:
    """Where builds are looked for and made, in order (see the module docstring)."""
    dirs: list[Path] = []
    env = os.environ.get("LBM_CAPTURE_CACHE")
    if env:
        dirs.append(Path(env))
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
    cc = os.environ.get("CC") or "cc"
    found = shutil.which(cc.split()[0]) if cc.strip() else None
    if found is None:
        return (
            f"no C compiler found ({cc!r} is not on PATH): install build-essential and "
            "python3-dev, then run `python -m capture.build`"
        )
    return "a C compiler and Python headers (python3-dev) are needed: run `python -m capture.build`"


def build(ext: Extension, dest: Path) -> Path:
    """Compile `ext` into directory `dest` (temporary name, then rename); returns the path.
    Raises whatever the compiler or file system raises."""
    import cffi  # build time only

    dest.mkdir(parents=True, exist_ok=True)
    name = ext.module_name()
    final = dest / ext.filename()
    with tempfile.TemporaryDirectory(prefix=f".{ext.name}-", dir=dest) as tmp:
        ffi = cffi.FFI()
        ffi.cdef(ext.cdef)
        ffi.set_source(name, ext.source(), extra_compile_args=list(CFLAGS))
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
        "capture.fastpath falls back to its pure-Python record walker"
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
    ap = argparse.ArgumentParser(prog="python -m capture.build", description=__doc__)
    ap.add_argument("--dest", type=Path, help="build into this directory only")
    a = ap.parse_args(argv)
    status = 0
    for ext in EXTENSIONS:
        try:
            _, where = _install(ext, a.dest)
            print(f"capture.build: {ext.name}: {where}")
            for old in where.parent.glob(f"_lbm_{ext.name}_*{SUFFIX}"):
                if old != where:  # builds of earlier sources (a loaded one stays mapped)
                    with contextlib.suppress(OSError):
                        old.unlink()
        except CaptureError as exc:
            print(f"capture.build: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

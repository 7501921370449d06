"""The capture path's C extensions: one build scheme (`capture.native.build`), prebuilt at install
into the venv where a hardened service can load them, and a clear error without a compiler."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from capture.native import build

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "capture" / "native"


def _run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on PATH")
def test_install_entry_point_builds_both_extensions(tmp_path: Path) -> None:
    """`python -m capture.native.build` (the Makefile's install step) builds both extensions,
    readable by another user, with nothing half-written left and stale builds of this Python
    removed; a process pointed at that directory loads them from there."""
    dest = tmp_path / "cache"
    dest.mkdir()
    stale = dest / f"_lbm_tcpstate_0000000000000000{build.SUFFIX}"  # an earlier source's
    other = dest / "_lbm_tcpstate_0000000000000000.cpython-399-other.so"  # another Python's
    stale.write_bytes(b"old")
    other.write_bytes(b"other")
    run = subprocess.run(
        [sys.executable, "-m", "capture.native.build", "--dest", str(dest)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted([build.FASTWALK.filename(), build.TCPSTATE.filename(), other.name])
    for p in (dest / build.FASTWALK.filename(), dest / build.TCPSTATE.filename()):
        mode = p.stat().st_mode
        assert mode & stat.S_IROTH and mode & stat.S_IXOTH, oct(mode)  # service user
    env = dict(os.environ, LBM_CAPTURE_CACHE=str(dest), HOME=str(tmp_path / "home"))
    code = (
        "import capture.read.walk as f, capture.flow.tcpstate as t, capture.native.build as b\n"
        "print(f.IMPLEMENTATION)\n"
        "print(b.find(b.FASTWALK))\n"
        "print(b.find(b.TCPSTATE))\n"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    impl, fw, ts = out.stdout.split()
    assert impl == "c"
    assert Path(fw).parent == dest and Path(ts).parent == dest
    assert not (tmp_path / "home").exists()  # nothing built elsewhere


def _edited_header(tmp_path: Path, ext: build.Extension, edit: str) -> build.Extension:
    header = tmp_path / ext.header
    header.write_text((NATIVE / ext.header).read_text() + edit)
    return dataclasses.replace(ext, header=str(header))


def test_source_change_gives_a_new_build_name(tmp_path: Path) -> None:
    """A build is keyed by its header, sources and flags: an edited extension never loads a
    stale library."""
    changed = _edited_header(tmp_path, build.TCPSTATE, "\n/* edit */\n")
    assert changed.module_name() != build.TCPSTATE.module_name()
    assert build.TCPSTATE.module_name() == build.TCPSTATE.module_name()
    assert build.FASTWALK.module_name().startswith("_lbm_fastwalk_")


def test_missing_compiler_is_a_clear_capture_error(tmp_path: Path) -> None:
    """No build anywhere and no compiler: CaptureError names every place tried and what to
    install, and says the TCP state machine has no Python fallback."""
    env = dict(
        os.environ,
        CC=str(tmp_path / "no-such-cc"),
        LBM_CAPTURE_CACHE=str(tmp_path / "cache"),
        HOME=str(tmp_path / "home"),
    )
    code = (
        "import dataclasses, sys\n"
        "from capture import CaptureError\n"
        "from capture.native import build\n"
        "e = dataclasses.replace(build.TCPSTATE, header=sys.argv[1])\n"
        "try:\n"
        "    build.load(e)\n"
        "except CaptureError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('BUILT')\n"
    )
    header = _edited_header(tmp_path, build.TCPSTATE, "/* unbuilt */").header
    out = _run(code, env, header)
    assert out.returncode == 0, out.stderr
    msg = out.stdout
    assert "'tcpstate' is not built and could not be built" in msg
    assert str(tmp_path / "cache") in msg
    assert "no C compiler found" in msg and "build-essential" in msg
    assert "no pure-Python fallback" in msg
    # nothing half-built left under a final name
    assert not list((tmp_path / "cache").glob("*.so"))


def test_record_walker_falls_back_without_a_compiler(tmp_path: Path) -> None:
    """The record walker is optional: without its build the reader uses Python."""
    env = dict(os.environ, LBM_CAPTURE_NO_C="1")
    out = _run("import capture.read.walk as f; print(f.IMPLEMENTATION)", env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"


# --- hardening ------------------------------------------------------------------------------

HARDENING = ("-O2", "-fPIC", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2")
needs_cc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler on PATH")


@needs_cc
def test_helpers_are_compiled_with_the_hardening_flags(tmp_path: Path) -> None:
    """A real build through a compiler wrapper that logs its command lines: every compile of
    both extensions has the hardening flags (after Python's own CFLAGS, so they win), and the
    libraries use the stack protector and fortified libc calls."""
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec gcc "$@"\n')
    wrapper.chmod(0o755)
    dest = tmp_path / "cache"
    env = dict(os.environ, CC=str(wrapper), LDSHARED=f"{wrapper} -shared")
    env.pop("LBM_CAPTURE_SANITIZE", None)
    run = subprocess.run(
        [sys.executable, "-m", "capture.native.build", "--dest", str(dest)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    compiles = [line.split() for line in log.read_text().splitlines() if " -c " in f" {line} "]
    assert len(compiles) == 2, compiles  # one translation unit per extension
    for argv in compiles:
        for flag in HARDENING:
            assert flag in argv, (flag, argv)
        last_opt = [a for a in argv if a.startswith("-O")][-1]
        assert last_opt == "-O2", argv
    symbols = ""
    for so in dest.glob("*.so"):
        symbols += subprocess.run(
            ["nm", "-D", "--undefined-only", str(so)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    assert "__stack_chk_fail" in symbols
    assert "__snprintf_chk" in symbols  # _dnsscan.c's snprintf, fortified


@needs_cc
@pytest.mark.parametrize("source", sorted(p.name for p in NATIVE.glob("_*.c")))
def test_c_sources_compile_warning_free(source: str) -> None:
    """-Wall -Wextra -Werror with the hardening flags: a full compile, since some warnings
    (fortify's, maybe-uninitialized) come only from the optimiser."""
    cmd = ["gcc", "-Wall", "-Wextra", "-Werror", *HARDENING, "-Icapture/native", "-c"]
    cmd += ["-o", "/dev/null"]
    run = subprocess.run(
        [*cmd, f"capture/native/{source}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_shared_declarations_live_once_in_a_header() -> None:
    """The flow struct and the exported functions are declared in capture/native/*.h, which the C
    sources include and the cffi cdef is read from; no C file declares the struct again."""
    assert "typedef struct" in build.TCPSTATE.cdef and "} tcpflow;" in build.TCPSTATE.cdef
    assert "#define HIST_MAX 32" in build.TCPSTATE.cdef
    assert "#include" not in build.TCPSTATE.cdef and "#ifndef" not in build.TCPSTATE.cdef
    assert "walk_pcapng" in build.FASTWALK.cdef
    declared = [p.name for p in NATIVE.glob("*.[ch]") if "} tcpflow;" in p.read_text()]
    assert declared == ["_tcpstate.h"]
    for ext in build.EXTENSIONS:
        for src in ext.sources:
            assert f'#include "{ext.header}"' in (NATIVE / src).read_text(), src


def test_sanitizer_build_has_its_own_flags_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make asan` (LBM_CAPTURE_SANITIZE=1) builds with ASan + UBSan under another module
    name in a separate cache directory: the normal build is never replaced or loaded."""
    monkeypatch.delenv("LBM_CAPTURE_SANITIZE", raising=False)
    monkeypatch.delenv("LBM_CAPTURE_CACHE", raising=False)
    normal_dirs, normal_name = build.cache_dirs(), build.TCPSTATE.module_name()
    assert "-fstack-protector-strong" in build.cflags() and build.ldflags() == ()
    monkeypatch.setenv("LBM_CAPTURE_SANITIZE", "1")
    assert "-fsanitize=address,undefined" in build.cflags()
    assert "-fsanitize=address,undefined" in build.ldflags()
    dirs = build.cache_dirs()
    assert [d.name for d in dirs] == ["lbm-capture-asan"]
    assert not set(dirs) & set(normal_dirs)
    assert build.TCPSTATE.module_name() != normal_name


def test_make_asan_runs_in_ci() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make asan")
    assert "\nasan: venv" in (REPO / "Makefile").read_text()

"""The capture path's C extensions: one build scheme (`capture.build`), prebuilt at install
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

from capture import build

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on PATH")
def test_install_entry_point_builds_both_extensions(tmp_path: Path) -> None:
    """`python -m capture.fastpath` (the Makefile's install step) builds both extensions,
    readable by another user, with nothing half-written left and stale builds of this Python
    removed; a process pointed at that directory loads them from there."""
    dest = tmp_path / "cache"
    dest.mkdir()
    stale = dest / f"_lbm_tcpstate_0000000000000000{build.SUFFIX}"  # an earlier source's
    other = dest / "_lbm_tcpstate_0000000000000000.cpython-399-other.so"  # another Python's
    stale.write_bytes(b"old")
    other.write_bytes(b"other")
    run = subprocess.run(
        [sys.executable, "-m", "capture.fastpath", "--dest", str(dest)],
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
        "import capture.fastpath as f, capture.tcpstate as t, capture.build as b\n"
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


def test_source_change_gives_a_new_build_name() -> None:
    """A build is keyed by its source: an edited extension never loads a stale library."""
    changed = dataclasses.replace(build.TCPSTATE, cdef=build.TCPSTATE.cdef + "\n/* edit */\n")
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
        "import dataclasses\n"
        "from capture import CaptureError, build\n"
        "e = dataclasses.replace(build.TCPSTATE, cdef=build.TCPSTATE.cdef + '/* unbuilt */')\n"
        "try:\n"
        "    build.load(e)\n"
        "except CaptureError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('BUILT')\n"
    )
    out = _run(code, env)
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
    out = _run("import capture.fastpath as f; print(f.IMPLEMENTATION)", env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"

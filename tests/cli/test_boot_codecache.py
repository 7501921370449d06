"""appliance.cli.codecache: dataclass methods compiled once, the same classes either way.

Each case runs a small program in a fresh interpreter (the cache is process state): it defines
dataclasses of every kind the code base uses and prints what they do. The second run must
compile nothing and print the same; a broken cache file must change nothing but the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import codecache

REPO = Path(__file__).resolve().parents[2]

PROGRAM = r"""
import dataclasses, importlib.util, json, os, sys
from dataclasses import InitVar, dataclass, field
from pathlib import Path

# the module alone, not the `appliance.cli` package (which installs the real cache)
spec = importlib.util.spec_from_file_location("codecache", sys.argv[2])
cc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cc)
cache = Path(sys.argv[1])
installed = cc.install(cache)

@dataclass(frozen=True, order=True)
class Frozen:
    a: int
    b: str = "x"

@dataclass(slots=True, kw_only=True)
class Slotted:
    items: list[int] = field(default_factory=list)
    n: int = 0

@dataclass
class Post:
    raw: InitVar[str]
    value: str = field(init=False)
    hidden: int = field(default=3, repr=False, compare=False)
    def __post_init__(self, raw: str) -> None:
        self.value = raw.upper()

out = {"installed": installed}
a, b = Frozen(1), Frozen(1, "y")
out["frozen"] = [repr(a), a == Frozen(1), a < b, hash(a) == hash(Frozen(1))]
try:
    a.a = 2
except dataclasses.FrozenInstanceError:
    out["frozen"].append("refused")
s1, s2 = Slotted(), Slotted(n=2)
s1.items.append(1)
out["slotted"] = [repr(s1), repr(s2), s2.items, hasattr(s1, "__dict__")]
try:
    Slotted(1)
except TypeError:
    out["slotted"].append("kw_only")
p = Post("abc", hidden=9)
out["post"] = [repr(p), p == Post("abc"), p.value]
out["compiled"] = len(cc._new)
saved = cc.save(cache) if os.environ.get("SAVE") == "1" else None
out["saved"] = saved
print(json.dumps(out))
"""


def _run(cache: Path, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(cache), codecache.__file__],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "", "SAVE": "1", **env},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict = json.loads(proc.stdout)
    return result


def _behaviour(result: dict) -> tuple:
    return result["frozen"], result["slotted"], result["post"]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("codecache") / "dataclass-code.bin"
    return cache, _run(cache)


def test_second_run_compiles_nothing_and_behaves_the_same(first: tuple[Path, dict]) -> None:
    cache, one = first
    assert one["installed"] and one["compiled"] > 0 and one["saved"] is True
    assert cache.read_bytes().startswith(codecache.MAGIC_NUMBER)
    two = _run(cache)
    assert two["compiled"] == 0 and two["saved"] is False  # every method came from the cache
    assert _behaviour(two) == _behaviour(one)
    off = _run(cache, LBM_NO_CODE_CACHE="1")
    assert off["installed"] is False
    assert _behaviour(off) == _behaviour(one)
    assert one["frozen"][-1] == "refused" and one["slotted"][-1] == "kw_only"


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", codecache.MAGIC_NUMBER + b"\x00\x01", b"\x00\x00\x00\x00" + b"x" * 64],
    ids=["empty", "garbage", "torn", "other-python"],
)
def test_a_broken_cache_is_ignored_and_replaced(
    first: tuple[Path, dict], tmp_path: Path, content: bytes
) -> None:
    cache = tmp_path / "dataclass-code.bin"
    cache.write_bytes(content)
    result = _run(cache)
    assert _behaviour(result) == _behaviour(first[1])
    assert result["compiled"] > 0 and result["saved"] is True
    assert _run(cache)["compiled"] == 0


def test_nothing_is_written_without_byte_code_writes(tmp_path: Path) -> None:
    cache = tmp_path / "dataclass-code.bin"
    result = _run(cache, PYTHONDONTWRITEBYTECODE="1")
    assert result["compiled"] > 0 and result["saved"] is False
    assert not cache.exists()
    # an unwritable place is no error either
    result = _run(tmp_path / "missing" / "deeper" / "dataclass-code.bin")
    assert result["saved"] is False

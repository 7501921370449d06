"""Start-up: what `lbm capture replay` and `lbm --help` load (docs/startup.md).

Time is not asserted here (CI machines are noisy: bench/bench_capture.py prints the start-up
figures); what is loaded is. A replay of a capture without subjects signs nothing, reads no
metadata and runs no event loop, so it must not pay for `cryptography`, `pyarrow.dataset`,
`asyncio` or the registry's write side; `lbm --help` imports no command module. Each check runs
the real `lbm` entry point in a fresh interpreter and lists its modules at exit."""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from appliance.cli.commands import COMMANDS, load, short_help
from tests.support.lbm_testing import Lbm

REPO = Path(__file__).resolve().parents[2]

HARNESS = r"""
import json, sys
from appliance.cli.main import main
sys.argv = ["lbm", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.flush()
print("\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

# never needed by a replay without subjects (each was loaded before the first packet once)
NOT_FOR_A_REPLAY = (
    "cryptography",
    "bcrypt",
    "asyncio",
    "pyarrow.dataset",
    "store.sshsig",
    "appliance.policy.registry",
    "appliance.policy.officer_signatures",
    "appliance.cli.auth_cmd",
)


def _lbm(*args: str) -> tuple[int, str, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=60,
    )
    tail = json.loads(proc.stderr.rstrip().rsplit("\n", 1)[-1])
    return tail["code"], proc.stdout, set(tail["modules"])


def _one_packet_pcap(path: Path) -> Path:
    """One TCP SYN from an internal client (Ethernet, IPv4, TCP), as a classic pcap."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 5]), bytes([192, 0, 2, 80]))  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    path.write_bytes(header + record)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("boot") / "lbm-data"
    Lbm(data)("init", check=True)
    return data


def test_a_replay_loads_only_what_it_uses(data_dir: Path, tmp_path: Path) -> None:
    pcap = _one_packet_pcap(tmp_path / "one.pcap")
    code, out, modules = _lbm("--data-dir", str(data_dir), "capture", "replay", "--json", str(pcap))
    assert code == 0, out
    result = json.loads(out)
    assert (result["packets"], result["flows"]) == (1, 1)
    assert result["timing"]["first_batch_s"] > 0
    assert sorted(data_dir.glob("metadata/stream=flow/**/*.parquet"))  # written and published
    loaded = sorted(m for m in modules if m in NOT_FOR_A_REPLAY or m.startswith("cryptography."))
    assert loaded == []
    # as the program (`python -m`), a replay ends without the interpreter's teardown: its
    # output is whole and what it wrote durable (ledger, rows) when the process is gone
    again = Lbm(data_dir)("capture", "replay", "--again", "--json", str(pcap), check=True)
    assert json.loads(again.stdout)["packets"] == 1
    ledger = [json.loads(line) for line in (data_dir / "journal" / "replayed.jsonl").open()]
    assert [e.get("sha256") is not None for e in ledger if e.get("event") == "done"] == [True] * 2
    flows = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{data_dir}/metadata/stream=flow/**/*.parquet')"
    )
    assert flows.fetchone() == (2,)
    # the same data directory still signs: an audited command after it loads what it needs
    code, out, modules = _lbm("--data-dir", str(data_dir), "audit", "verify")
    assert code == 0, out
    assert "cryptography" in modules


def test_help_imports_no_command_module() -> None:
    code, out, modules = _lbm("--help")
    assert code == 0
    for _, attr, _ in COMMANDS:
        assert f"\n  {attr} " in out
    assert not [m for m in modules if m.startswith("appliance.cli.") and m.endswith("_cmd")]
    assert "numpy" not in modules and "pyarrow" not in modules


@pytest.mark.parametrize("limit", [20, 45, 60, 200])
def test_help_lines_are_the_groups_own(limit: int) -> None:
    for _, attr, text in COMMANDS:
        command = load(attr)
        assert command is not None
        assert inspect.cleandoc(command.help or "").split("\n\n")[0] == text, attr
        assert command.get_short_help_str(limit) == short_help(text, limit)

"""The bounds on subjects' content held in memory (`[capture]`) and on archive segments
(`[archive]`) are lbm.toml options: an out-of-range value is refused by `lbm config check`
naming the key, the defaults are the values the code had, and values set in lbm.toml reach
the pipeline and archive `lbm capture` builds. What a small hold bound does to packets is
checked with the same option in test_capture_policy_hold.py."""

from __future__ import annotations

import io
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from capture_policy import set_config
from lbm_testing import Lbm

from appliance.cli.app import App
from appliance.cli.capture_cmd import build_pipeline
from appliance.cli.main import main
from appliance.config.schema import SCHEMA
from capture.subjects import SubjectLimits, hold, recorder
from store import archive

DEFAULTS = {opt.name: opt.default for opt in SCHEMA}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runner = Lbm(tmp_path_factory.mktemp("limits") / "data")
    assert runner.inproc("init").returncode == 0
    return runner.data_dir


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("capture", "hold_max_packets", "0"),
        ("capture", "hold_max_bytes", "1_099_511_627_776"),  # 1 TiB: a typo, not a setting
        ("capture", "hold_total_bytes", "-1"),
        ("capture", "record_max_bytes", "100"),
        ("capture", "record_max_age_s", "86400"),  # a subject's packets a day in memory
        ("capture", "record_total_bytes", '"64MiB"'),
        ("archive", "segment_max_bytes", "0"),
    ],
)
def test_out_of_range_limit_is_refused_naming_the_key(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    section: str,
    key: str,
    value: str,
) -> None:
    """`lbm config check FILE` through the CLI's own `main()`, in this process."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{key} = {value}\n")
    monkeypatch.delenv("LBM_CONFIG", raising=False)
    monkeypatch.setattr(
        sys, "argv", ["lbm", "--data-dir", str(data_dir), "config", "check", str(cfg)]
    )
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and f"[{section}] {key}: must be" in err.getvalue(), err.getvalue()


def test_defaults_are_the_values_the_code_had() -> None:
    lim = SubjectLimits()
    assert DEFAULTS["capture.hold_max_packets"] == lim.hold_max_packets == hold.HOLD_MAX_PACKETS
    assert DEFAULTS["capture.hold_max_bytes"] == lim.hold_max_bytes == hold.HOLD_MAX_BYTES
    assert DEFAULTS["capture.hold_total_bytes"] == lim.hold_total_bytes == hold.HOLD_TOTAL_BYTES
    assert DEFAULTS["capture.record_max_bytes"] == lim.record_max_bytes
    assert lim.record_max_bytes == recorder.RECORD_MAX_BYTES
    assert DEFAULTS["capture.record_max_age_s"] == lim.record_max_age_s
    assert lim.record_max_age_s == recorder.RECORD_MAX_AGE_S
    assert DEFAULTS["capture.record_total_bytes"] == lim.record_total_bytes
    assert lim.record_total_bytes == recorder.TOTAL_MAX_BYTES
    assert DEFAULTS["archive.segment_max_bytes"] == archive.DEFAULT_MAX_BYTES


def test_limits_in_lbm_toml_reach_the_pipeline_and_archive(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    chosen = {
        ("capture", "hold_max_packets"): 3,
        ("capture", "hold_max_bytes"): 4_096,
        ("capture", "hold_total_bytes"): 0,
        ("capture", "record_max_bytes"): 8_192,
        ("capture", "record_max_age_s"): 2,
        ("capture", "record_total_bytes"): 2 << 20,
        ("archive", "segment_max_bytes"): 3 << 20,
    }
    for (section, key), value in chosen.items():
        set_config(copy, section, key, str(value))
    monkeypatch.delenv("LBM_CONFIG", raising=False)
    pipe, (source, arch) = build_pipeline(App(str(copy), None), "replay", None)
    try:
        assert pipe.gate is not None and pipe.recorder is not None
        h, rec = pipe.gate.hold, pipe.recorder
        assert (h.max_packets, h.max_bytes, h.total_bytes) == (3, 4_096, 0)
        assert (rec.max_bytes, rec.max_age_s, rec.total_bytes) == (8_192, 2.0, 2 << 20)
        assert arch.max_bytes == 3 << 20
        pipe.gate.reset()  # a new capture source gets a new hold with the same bounds
        assert (pipe.gate.hold.max_packets, pipe.gate.hold.total_bytes) == (3, 0)
    finally:
        pipe.close()
        arch.close()
        source.stop()

"""Capture on the inside interface writes a `web` row (`decision = "bypassed"`) for each web
connection that went past the proxy in transparent mode's subjects scope, from the flow's own
metadata; the subject's connection, which the proxy handled, gets none. Replays corpus captures
through the same pipeline `lbm capture live --interface INSIDE` builds, in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from capture_policy import set_config
from lbm_testing import INV_RECIPIENT, Lbm, corpus_root

from appliance.cli.app import App
from appliance.cli.capture_cmd import build_pipeline
from capture.replay import replay
from store.metadata import read_stream
from store.paths import DataPaths

NOW = "2012-04-01T00:00:00Z"  # grants and leases before the captures (2012-2013)
CAPTURES = (
    "zeek__tls__tls-conn-with-extensions.pcap",  # 192.168.1.105 -> ssl.gstatic.com:443 (subject)
    "zeek__http__get.pcap",  # 141.142.228.5 -> bro.org:80, GET (non-subject)
    "zeek__tls__tls1.2.pcap",  # 10.0.0.80 -> :443, no SNI (nobody: no lease)
)


@pytest.fixture(scope="module")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory,
    lbm_inproc: Callable[..., object],
    grant_inproc: Callable[..., None],
) -> Path:
    base = tmp_path_factory.mktemp("bypassed")
    lbm = Lbm(base / "data")
    data = lbm.data_dir
    lbm_inproc(data, "init")
    config = data / "lbm.toml"
    config.write_text(config.read_text().replace("fake_clock = false", "fake_clock = true"))
    for section, key, value in (
        ("web", "mode", '"transparent"'),
        ("web", "transparent_scope", '"subjects"'),
        ("gateway", "inside_interface", '"lan0"'),
        ("capture", "internal_networks", '["10.0.0.0/8", "192.168.0.0/16", "141.142.0.0/16"]'),
        ("do_not_decrypt", "hosts", '["bro.org"]'),
    ):
        set_config(data, section, key, value)
    fake = {"LBM_FAKE_NOW": NOW}
    feed = base / "leases.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        "p12345,ip,192.168.1.105,2012-01-01T00:00:00Z,\n"
        "p23456,ip,141.142.228.5,2012-01-01T00:00:00Z,\n"
    )
    lbm_inproc(data, "identity", "import", str(feed), env=fake)
    lbm_inproc(data, "keys", "investigator", "add", "inv1", INV_RECIPIENT, "--principal", "p900",
               env=fake)  # fmt: skip
    grant_inproc(data, "REF-W", "p12345", when=NOW)
    return data


@pytest.fixture(scope="module")
def web_rows(data_dir: Path, corpus_dir: Path) -> list[dict]:
    data = data_dir
    mp = pytest.MonkeyPatch()
    mp.setenv("LBM_FAKE_NOW", NOW)
    try:
        app = App(str(data), None)
        pipe, (source, archive) = build_pipeline(app, "capture-lan0", "lan0")
        assert pipe.bypassed is not None
        try:
            replay([corpus_dir / name for name in CAPTURES], pipe)
        finally:
            pipe.close()
            archive.close()
            source.stop()
    finally:
        mp.undo()
    rows: list[dict] = read_stream(DataPaths(data), "web").to_pylist()
    return rows


@pytest.fixture(scope="module")
def corpus_dir() -> Path:
    root = corpus_root() / "pcaps" / "dev"
    if not root.is_dir():
        pytest.skip(f"test corpus not found at {root} (set LBM_CORPUS to ../shared/corpus)")
    return root


def test_non_subjects_get_a_bypassed_web_row_from_their_flow(web_rows: list[dict]) -> None:
    by_client = {r["client_ip"]: r for r in web_rows}
    plain = by_client["141.142.228.5"]
    assert plain["principal"] == "p23456" and plain["decision"] == "bypassed"
    assert (plain["scheme"], plain["host"], plain["port"], plain["method"]) == (
        "http", "bro.org", 80, "GET",
    )  # fmt: skip
    assert plain["do_not_decrypt"] is True  # bro.org is listed: the row says so
    assert plain["bytes_down"] > 0 and plain["refs"] == [] and plain["record_ids"] == []
    assert plain["uid"] == plain["request_id"] and plain["community_id"].startswith("1:")
    assert plain["notice_version"]
    nobody = by_client["10.0.0.80"]
    assert nobody["principal"] is None and nobody["scheme"] == "https"
    assert nobody["server_port"] == 443 and nobody["method"] is None


def test_the_subjects_connection_gets_no_bypassed_row(web_rows: list[dict]) -> None:
    # it was redirected to the proxy, which writes its own rows
    assert "192.168.1.105" not in {r["client_ip"] for r in web_rows}
    assert {r["decision"] for r in web_rows} == {"bypassed"}
    assert all(r["server_port"] in (80, 443) for r in web_rows)


def test_only_inside_capture_in_subjects_scope_writes_them(
    data_dir: Path, web_rows: list[dict]
) -> None:
    for interface, scope in (("lan0", "all"), ("eth9", "subjects")):
        set_config(data_dir, "web", "transparent_scope", f'"{scope}"')
        try:
            app = App(str(data_dir), None)
            pipe, (source, archive) = build_pipeline(app, f"capture-{interface}", interface)
            try:
                assert pipe.bypassed is None, (interface, scope)
            finally:
                pipe.close()
                archive.close()
                source.stop()
        finally:
            set_config(data_dir, "web", "transparent_scope", '"subjects"')

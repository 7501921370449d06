"""VLAN ids in `flow` rows: the first frame's outer 802.1Q tag and, for QinQ, the inner one,
as Zeek's conn.log `vlan` / `inner_vlan` (policy/protocols/conn/vlan-logging) has them."""

from __future__ import annotations

from pathlib import Path

from capture_zeeklogs import corpus, read_zeek_log, replay_tables


def test_qinq_vlans_match_zeek(tmp_path: Path) -> None:
    root = corpus()
    pcap = root / "pcaps" / "dev" / "zeek__q-in-q.pcap"
    log = root / "zeek_baselines" / pcap.name / "scripts.policy.protocols.conn.vlan-logging"
    _, zeek = read_zeek_log(log / "conn.log")
    assert zeek
    flow, _ = replay_tables([pcap], tmp_path / "data")
    ours = {
        (r["client_ip"], str(r["client_port"]), r["server_ip"], str(r["server_port"])): (
            r["vlan"],
            r["inner_vlan"],
        )
        for r in flow.to_pylist()
    }
    for z in zeek:
        key = (z["id.orig_h"], z["id.orig_p"], z["id.resp_h"], z["id.resp_p"])
        assert ours[key] == (int(z["vlan"]), int(z["inner_vlan"])), key


def test_untagged_and_tagged_flows_in_one_capture(tmp_path: Path) -> None:
    """A capture mixing tagged and untagged frames: untagged flows have null VLANs, tagged
    ones their tag; nothing else in the rows depends on the tag."""
    pcap = corpus() / "pcaps" / "dev" / "zeek__mixed-vlan-mpls.pcap"
    flow, _ = replay_tables([pcap], tmp_path / "data")
    rows = flow.to_pylist()
    vlans = {r["vlan"] for r in rows}
    assert None in vlans and 4093 in vlans
    assert all(r["inner_vlan"] is None for r in rows)

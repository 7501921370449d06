"""`lbm capture replay` as a user runs it: real subprocess, real corpus, real Parquet output."""

from __future__ import annotations

import json
from pathlib import Path

from lbm_testing import Lbm

from store.metadata import read_stream
from store.paths import DataPaths


def test_replay_writes_flow_and_dns_rows_and_prints_summary(lbm: Lbm, corpus: Path) -> None:
    files = [
        corpus / "pcaps" / "dev" / n
        for n in ("zeek__wikipedia.pcap", "zeek__http__get.pcap", "zeek__tunnels__Teredo.pcap")
    ]
    res = lbm("capture", "replay", *map(str, files), "--json", check=True)
    summary = json.loads(res.stdout)
    assert summary["packets"] == 136 + 14 + 78  # MANIFEST packet counts
    assert summary["flows"] == 34 + 1 + 21  # Zeek's conn.log row counts
    # MANIFEST: wikipedia has 136 frames of which 121 IPv4 + 5 IPv6; the others are all IP
    assert summary["bad_packets"]["non_ip"] == 136 - 121 - 5
    assert summary["files_failed"] == {}
    paths = DataPaths(lbm.data_dir)
    flows = read_stream(paths, "flow")
    assert flows.num_rows == summary["flows"]
    rows = flows.to_pylist()
    assert {r["interface"] for r in rows} == {f.name for f in files}
    get = next(r for r in rows if r["interface"] == "zeek__http__get.pcap")
    assert (get["client_ip"], get["server_port"], get["conn_state"], get["history"]) == (
        "141.142.228.5",
        80,
        "SF",
        "ShADadFf",
    )
    assert get["http_host"] == "bro.org" and get["gateway"] == "gw1"
    assert get["refs"] == [] and get["record_ids"] == [] and get["principal"] is None
    assert get["community_id"].startswith("1:")
    dns = read_stream(paths, "dns")
    meta = next(r for r in dns.to_pylist() if r["qname"] == "meta.wikimedia.org")
    flow = next(r for r in rows if r["uid"] == meta["uid"])  # the dns row joins its flow
    assert (meta["client_ip"], meta["server_ip"], meta["server_port"]) == (
        "141.142.220.118",
        "141.142.2.2",
        53,
    )
    assert meta["community_id"] == flow["community_id"] and flow["service"] == "dns"
    assert meta["answers"] and meta["rcode_name"] == "NOERROR"
    assert summary["dns_rows"] == dns.num_rows


def test_text_summary_lists_bad_packets_by_kind(lbm: Lbm, corpus: Path) -> None:
    res = lbm(
        "capture",
        "replay",
        str(corpus / "pcaps" / "dev" / "zeek__trunc__ip4-trunc.pcap")
        if (corpus / "pcaps" / "dev" / "zeek__trunc__ip4-trunc.pcap").exists()
        else str(corpus / "pcaps" / "malformed" / "zeek__trunc__ip4-trunc.pcap"),
        check=True,
    )
    assert "packets: 1" in res.stdout
    assert "bad packets by kind:" in res.stdout and "truncated: 1" in res.stdout


def test_broken_header_is_named_and_other_files_still_run(
    lbm: Lbm, corpus: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(b"this is not a capture file at all")
    good = corpus / "pcaps" / "dev" / "zeek__http__get.pcap"
    res = lbm("capture", "replay", str(broken), str(good), "--json")
    assert res.returncode == 1
    assert str(broken) in res.stderr and "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    assert list(summary["files_failed"]) == [str(broken)]
    assert summary["flows"] == 1
    assert read_stream(DataPaths(lbm.data_dir), "flow").num_rows == 1


def test_whole_malformed_corpus_is_processed_without_a_crash(lbm: Lbm, corpus: Path) -> None:
    files = sorted(str(p) for p in (corpus / "pcaps" / "malformed").iterdir())
    res = lbm("capture", "replay", *files, "--json", timeout=120)
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    # exit 1 only when some file's header is broken, and then each is named on stderr
    assert res.returncode == (1 if summary["files_failed"] else 0)
    for name in summary["files_failed"]:
        assert name in res.stderr
    assert summary["packets"] > 0 and summary["flows"] > 0
    assert sum(summary["bad_packets"].values()) > 0


def test_replay_needs_an_initialised_data_dir(tmp_path: Path, corpus: Path) -> None:
    res = Lbm(tmp_path / "nothing")(
        "capture", "replay", str(corpus / "pcaps" / "dev" / "zeek__http__get.pcap")
    )
    assert res.returncode != 0 and "not an initialised data directory" in res.stderr


_DONE_SPY = """
import sys
from pathlib import Path
from capture.read import replayed
from store.metadata import read_stream
from store.paths import DataPaths

data, pcap = sys.argv[1], sys.argv[2]
done = replayed.ReplayLedger.done


def spy(self, *args, **kwargs):
    print("published at done:", read_stream(DataPaths(Path(data)), "flow").num_rows)
    return done(self, *args, **kwargs)


replayed.ReplayLedger.done = spy
from appliance.cli.main import main

sys.argv = ["lbm", "--data-dir", data, "capture", "replay", pcap]
main()
"""


def test_the_ledger_says_done_only_after_the_rows_are_published(lbm: Lbm, corpus: Path) -> None:
    """The last file's rows are made durable and published before its ledger entry says
    "done" (and while its hashing child finishes): a crash between the two leaves an unfinished
    entry, which the next replay reports, never a done entry for rows that were lost."""
    import subprocess
    import sys

    pcap = corpus / "pcaps" / "dev" / "zeek__wikipedia.pcap"
    out = subprocess.run(
        [sys.executable, "-c", _DONE_SPY, str(lbm.data_dir), str(pcap)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "published at done: 34" in out  # Zeek's conn.log rows for the file

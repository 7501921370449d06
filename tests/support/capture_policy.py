"""Helpers for the capture policy tests (tests/capture/test_capture_policy_*.py): a data dir
with leases, an investigator and a packets grant made by the real CLI; `lbm capture
replay`'s own pipeline (`build_pipeline`) run in-process with a chosen batch size (not a
command-line option); the archive read back with the investigator's key."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import dpkt
import pytest
from lbm_testing import Lbm, grant_argv

from appliance.cli.app import App
from appliance.cli.capture_cmd import build_pipeline
from capture.pipeline import Pipeline
from capture.replay import replay
from store import agefile as age
from store.keys import KeyStore
from store.paths import DataPaths
from store.segment import PlainStream, read_records

REF = "ca1-2026-0042"
OFFICER = ("p500", "A. Officer", "head_of_professional_standards", "superintendent")


def import_leases(
    lbm: Lbm, tmp_path: Path, now: str, leases: list[tuple[str, str, str, str]]
) -> None:
    """(principal, ip, valid_from, valid_to or "") rows, imported at fake time `now`."""
    feed = tmp_path / "leases.csv"
    feed.write_text(
        "principal,kind,value,valid_from,valid_to\n"
        + "".join(f"{p},ip,{ip},{a},{b}\n" for p, ip, a, b in leases)
    )
    lbm("identity", "import", str(feed), check=True, env={"LBM_FAKE_NOW": now})


def grant(lbm: Lbm, now: str, *extra: str, ref: str = REF, command: str = "grant") -> str:
    """An investigator (first time) and a packets grant for p100 at fake time `now`; returns
    the investigator's identity text."""
    fake = {"LBM_FAKE_NOW": now}
    secret, public = age.generate()
    lbm("keys", "investigator", "add", "inv1", public, "--principal", "p900", check=True, env=fake)
    argv = grant_argv(ref, "p100", channel="packets", officer=OFFICER, command=command, extra=extra)
    lbm(*argv, check=True, env=fake)
    return age.identity_file_text(secret)


def set_config(data_dir: Path, section: str, key: str, value: str) -> None:
    config = data_dir / "lbm.toml"
    lines = config.read_text().split("\n")
    at = lines.index(f"[{section}]")
    i = next(j for j in range(at, len(lines)) if lines[j].startswith(f"{key} = "))
    lines[i] = f"{key} = {value}"
    config.write_text("\n".join(lines))


def run_replay(
    data_dir: Path, files: list[Path], max_packets: int, monkeypatch: pytest.MonkeyPatch, now: str
) -> Pipeline:
    """`lbm capture replay`'s pipeline with `max_packets` per batch, in this process; returns
    the closed pipeline (its `summary`, its `gate`)."""
    monkeypatch.setenv("LBM_FAKE_NOW", now)
    app = App(str(data_dir), None)
    pipe, (source, archive) = build_pipeline(app, "replay", None)
    try:
        replay(files, pipe, max_packets=max_packets)
    finally:
        pipe.close()
        archive.close()
        source.stop()
    return pipe


def records(paths: DataPaths, identity: str, ref: str = REF) -> list[Any]:
    """The archive's records for `ref`, decrypted with the investigator's identity."""
    if not (paths.archive / ref).is_dir():
        return []
    ks = KeyStore(paths)
    auth_key = ks.unwrap_authorisation(ref, identity)
    out = []
    for seg in sorted((paths.archive / ref).glob("[0-9]*.age")):
        seg_key = ks.unwrap_segment(ref, int(seg.name.split(".")[0]), auth_key)
        with seg.open("rb") as fh:
            out += read_records(PlainStream(age.AgeReader(fh, [seg_key]).chunks()))
    return out


def packets(recs: list[Any], principal: str = "p100") -> list[tuple[int, bytes]]:
    """Every archived packet of `recs` (each checked to be `principal`'s): (µs, frame)."""
    out = []
    for r in recs:
        assert r.header["channel"] == "packets" and r.header["principal"] == principal
        for ts, frame in dpkt.pcapng.Reader(io.BytesIO(r.data)):
            out.append((round(ts * 1e6), bytes(frame)))
    return out


def pcap_packets(path: Path) -> list[tuple[int, bytes]]:
    with path.open("rb") as fh:
        return [(round(ts * 1e6), bytes(f)) for ts, f in dpkt.pcap.Reader(fh)]


def endpoints(frame: bytes) -> tuple[str, str, int, int]:
    """(source, destination, source port, destination port) of an Ethernet/IPv4 frame."""
    ip = dpkt.ethernet.Ethernet(frame).data
    return socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.data.sport, ip.data.dport

"""store/collateral.py in process: open and cut-off segments are refused, an approval cut off
between the chain amendment and the key's destruction is visible to `verify` and finishes when
run again, and a segment left with no record still verifies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from store import agefile as age
from store import signing
from store.archive import Archive
from store.archive_audit import cross_check, on_record
from store.audit import AuditLog
from store.clock import Clock
from store.collateral import CollateralError, locate, remove_record
from store.framing import PlainStream, open_segment, read_records
from store.keys import KeyStore
from store.manifest import VerifyReport, verify_all
from store.paths import DataPaths


class Setup:
    def __init__(self, root: Path) -> None:
        self.paths = DataPaths(root)
        self.key = signing.create(self.paths, "test gateway")
        self.audit = AuditLog(self.paths, self.key, Clock(), witness=False)
        self.identity, public = age.generate()
        self.ident_text = age.identity_file_text(self.identity)
        self.public = public

    def grant(self, ref: str) -> None:
        KeyStore(self.paths).create_authorisation_key(ref, [self.public])

    def archive(self) -> Archive:
        return Archive(self.paths, self.key, Clock(), audit=self.audit, segment_max_age=3600)

    def write(self, archive: Archive, ref: str, *contents: bytes) -> list[str]:
        ids = []
        for content in contents:
            sink = archive.open_record(ref, "email", "p12345", "2026-03-01T09:00:00Z", "message")
            sink.write(content)
            ids.append(sink.close())
        return ids

    def remove(self, ref: str, record_id: str, proposal: int) -> Any:
        people = {"proposal": proposal, "proposer": "a", "approver": "b"}
        return remove_record(self.paths, self.key, Clock(), self.audit, "root", ref, record_id,
                             self.ident_text, **people)  # fmt: skip

    def verify(self, ref: str) -> VerifyReport:
        report = verify_all(self.paths.archive, signing.load_public_keys(self.paths), ref)
        cross_check(self.paths, on_record(self.audit.entries()), report, ref)
        return report


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("collstore") / "data")


def test_open_segment_is_refused_until_sealed(setup: Setup) -> None:
    setup.grant("OPEN-1")
    archive = setup.archive()
    [rid] = setup.write(archive, "OPEN-1", b"collateral while open")
    with pytest.raises(CollateralError) as info:
        setup.remove("OPEN-1", rid, 1)
    assert info.value.code == "open_segment" and "still being written" in str(info.value)
    assert KeyStore(setup.paths).segment_key_path("OPEN-1", 1).exists()
    archive.close()  # sealed: now it can go
    assert setup.remove("OPEN-1", rid, 1).records_kept == 0
    report = setup.verify("OPEN-1")
    assert report.amended and not report.ok  # ok once the approval is audited (evidence layer)
    assert any("no collateral_approve for it is on record" in p for p in report.problems)


def test_cut_off_segment_is_refused_with_the_command_to_run(setup: Setup) -> None:
    setup.grant("CUT-1")
    archive = setup.archive()
    [rid] = setup.write(archive, "CUT-1", b"cut off")
    for seg in archive._open["CUT-1"]:  # a crash: the writer's flock goes, no manifest
        seg.writer.release()
    with pytest.raises(CollateralError) as info:
        locate(setup.paths, "CUT-1", rid)
    assert info.value.code == "cut_off_segment" and "lbm archive recover CUT-1" in str(info.value)


def test_interrupted_approval_shows_in_verify_and_finishes_when_run_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.grant("RESUME-1")
    archive = setup.archive()
    ids = setup.write(archive, "RESUME-1", b"keep one", b"drop me", b"keep two")
    archive.close()

    def failing_shred(path: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("store.collateral.shred", failing_shred)
    with pytest.raises(CollateralError) as info:
        setup.remove("RESUME-1", ids[1], 7)
    assert info.value.code == "write_failed" and "run the approval again" in str(info.value)
    problems = setup.verify("RESUME-1").problems
    assert any("interrupted approval" in p for p in problems), problems
    monkeypatch.undo()

    removal = setup.remove("RESUME-1", ids[1], 7)
    assert (removal.resumed, removal.key_destroyed, removal.new_segment) == (True, True, 2)
    seals = [e for e in setup.audit.entries() if e["action"] == "segment_close"
             and e["fields"]["segment"] == "RESUME-1/000002"]  # fmt: skip
    assert len(seals) == 1 and seals[0]["fields"]["replaces"] == "RESUME-1/000001"
    reader, fh = open_segment(setup.paths, "RESUME-1", 2, setup.ident_text)
    with fh:
        kept = read_records(PlainStream(reader.chunks()))
    assert [(r.header["id"], r.data) for r in kept] == [
        (ids[0], b"keep one"), (ids[2], b"keep two")
    ]  # fmt: skip
    # a second amendment for the same proposal is never written
    manifests = sorted((setup.paths.archive / "RESUME-1").glob("*.manifest.json"))
    assert sum("amendment" in json.loads(p.read_bytes()) for p in manifests) == 1

"""`lbm archive verify` against the audit log, and `lbm archive recover`, through the real CLI.

The attacks: whoever can write the data directory removes evidence along with everything the
archive itself could compare it with (a whole archive directory, a segment and its manifest, a
wrapped key). The audit log remembers every seal, so verify must name what is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lbm_testing import Lbm, grant_argv

from store import agefile as age
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.keys import KeyStore
from store.paths import DataPaths

REF = "AUTH-XC-1"
OTHER = "AUTH-XC-2"


def _archive(data: Path, ref: str = REF, segments: int = 3, *, audited: bool = True) -> None:
    """One record per segment, sealed and audited as the daemons do."""
    paths = DataPaths(data)
    KeyStore(paths).create_authorisation_key(ref, [age.generate()[1]])
    key = signing.load(paths)
    audit = AuditLog(paths, key, Clock(), witness=False) if audited else None
    archive = Archive(paths, key, Clock(), audit=audit, segment_max_bytes=1)
    for n in range(segments):
        sink = archive.open_record(ref, "email", "p12345", "2026-03-01T09:00:00Z", "message")
        sink.write(f"message {n}\r\n".encode() * 10)
        sink.close()
    archive.close()


def _verify(lbm: Lbm, *args: str) -> tuple[int, list[str], str]:
    result = lbm("archive", "verify", *args)
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    return result.returncode, problems, result.stdout


def _entries(data: Path) -> list[dict]:
    return [json.loads(x) for x in (data / "audit" / "audit.jsonl").read_text().splitlines()]


def test_segment_close_entries_carry_what_verify_cross_checks(lbm: Lbm) -> None:
    _archive(lbm.data_dir, segments=2)
    closes = [e for e in _entries(lbm.data_dir) if e["action"] == "segment_close"]
    assert [e["fields"]["segment_number"] for e in closes] == [1, 2]
    for entry in closes:
        fields = entry["fields"]
        assert entry["refs"] == [REF] and fields["ref"] == REF
        name = f"{fields['segment_number']:06d}"
        manifest = json.loads(
            (lbm.data_dir / "archive" / REF / f"{name}.manifest.json").read_text()
        )
        assert fields["ciphertext_sha256"] == manifest["ciphertext_sha256"]
        assert fields["segment_key_fingerprint"] == manifest["segment_key_fingerprint"]
        assert "p12345" not in json.dumps(entry)  # no principal in the audit entry
    code, problems, out = _verify(lbm)
    assert code == 0 and not problems and "audit log records 2 sealed" in out


def _rm_archive(data: Path) -> None:
    shutil.rmtree(data / "archive" / REF)


def _empty_archive(data: Path) -> None:
    for path in (data / "archive" / REF).iterdir():
        path.unlink()


def _rm_segment(data: Path) -> None:
    for suffix in (".age", ".index.jsonl", ".manifest.json"):
        (data / "archive" / REF / f"000002{suffix}").unlink()


def _rm_segment_key(data: Path) -> None:
    (data / "keystore" / REF / "000002.age").unlink()


def _rm_auth_key(data: Path) -> None:
    (data / "keystore" / REF / "auth.age").unlink()


def _rm_keystore(data: Path) -> None:
    shutil.rmtree(data / "keystore" / REF)


ATTACKS = {
    "rm -r archive/REF": (_rm_archive, [f"{REF}: archive directory archive/{REF} is missing"]),
    "every file of archive/REF": (_empty_archive, [f"{REF}/000001: segment 000001.age"]),
    "one whole segment": (_rm_segment, [f"{REF}/000002: segment 000002.age and its manifest"]),
    "one wrapped segment key": (
        _rm_segment_key,
        [f"{REF}/000002: wrapped segment key keystore/{REF}/000002.age is missing"],
    ),
    "keystore/REF/auth.age": (
        _rm_auth_key,
        [f"{REF}: wrapped authorisation key keystore/{REF}/auth.age is missing"],
    ),
    "rm -r keystore/REF": (
        _rm_keystore,
        [f"{REF}: wrapped authorisation key", f"{REF}/000003: wrapped segment key"],
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_verify_names_evidence_removed_with_its_own_traces(lbm: Lbm, attack: str) -> None:
    _archive(lbm.data_dir)
    _archive(lbm.data_dir, OTHER, segments=1)
    assert _verify(lbm)[0] == 0
    action, expected = ATTACKS[attack]
    action(lbm.data_dir)
    for args in ((), (REF,)):
        code, problems, _ = _verify(lbm, *args)
        assert code == 1, (attack, args)
        for text in expected:
            assert any(p.startswith(f"problem: {text}") for p in problems), problems
        assert all(OTHER not in p for p in problems)
    assert _verify(lbm, OTHER)[0] == 0  # the untouched archive still verifies on its own
    report = json.loads(lbm("archive", "verify", "--json").stdout)
    assert report["ok"] is False and report["on_record"] == 4


def test_destruction_on_record_is_not_a_problem(lbm: Lbm) -> None:
    _archive(lbm.data_dir)
    paths = DataPaths(lbm.data_dir)
    audit = AuditLog(paths, signing.load(paths), Clock(), witness=False)
    store = KeyStore(paths, audit=audit, actor="test")
    assert store.destroy_segment(REF, 2)
    assert _verify(lbm)[0] == 0
    (lbm.data_dir / "keystore" / REF / "000003.age").unlink()  # no record of this one
    code, problems, _ = _verify(lbm)
    assert code == 1 and len(problems) == 1 and f"{REF}/000003: wrapped segment key" in problems[0]
    store.destroy_authorisation(REF)  # crypto-shreds every segment of REF, on record
    assert _verify(lbm)[0] == 0


def test_an_unaudited_shred_is_reported(lbm: Lbm) -> None:
    """Shredding without an audit entry (KeyStore without audit) is indistinguishable from
    deletion: verify says so."""
    _archive(lbm.data_dir)
    KeyStore(DataPaths(lbm.data_dir)).destroy_segment(REF, 1)
    code, problems, _ = _verify(lbm, REF)
    assert code == 1 and f"{REF}/000001: wrapped segment key" in problems[0]


def test_a_granted_ref_without_archive_is_fine_until_its_key_goes(lbm: Lbm) -> None:
    """A reference the registry knows (granted through the CLI, nothing archived yet) verifies
    ok without an archive directory; its wrapped authorisation key must still be there."""
    lbm("keys", "investigator", "add", "inv1", age.generate()[1], "--principal", "p900", check=True)
    lbm(*grant_argv(REF), check=True)
    assert not (lbm.data_dir / "archive" / REF).exists()
    code, problems, out = _verify(lbm, REF)
    assert code == 0, out
    assert _verify(lbm)[0] == 0
    (lbm.data_dir / "keystore" / REF / "auth.age").unlink()
    code, problems, _ = _verify(lbm)
    assert code == 1 and f"{REF}: wrapped authorisation key" in problems[0]
    code, problems, _ = _verify(lbm, "NEVER-GRANTED")
    assert code == 1 and "NEVER-GRANTED: no archive" in problems[0]


def test_a_replaced_segment_and_manifest_disagree_with_the_log(lbm: Lbm) -> None:
    """Someone holding the gateway key re-signs a manifest over a replaced segment: the chain
    verifies, the audit log's ciphertext hash does not match."""
    _archive(lbm.data_dir, segments=1)
    paths = DataPaths(lbm.data_dir)
    directory = paths.archive / REF
    manifest = json.loads((directory / "000001.manifest.json").read_text())
    forged = {k: v for k, v in manifest.items() if k not in ("sig", "format", "key")}
    forged["ciphertext_sha256"] = "0" * 64
    for name in ("000001.manifest.json", "chain.json"):
        (directory / name).unlink()
    from store import manifest as chain

    chain.append(directory, signing.load(paths), forged)
    code, problems, _ = _verify(lbm, REF)
    assert code == 1
    assert any("differs from the one the audit log records" in p for p in problems), problems


# -- lbm archive recover ----------------------------------------------------------------------
WRITER = """
import os, signal, sys
from pathlib import Path
from store import signing
from store.archive import Archive
from store.audit import AuditLog
from store.clock import Clock
from store.paths import DataPaths
paths = DataPaths(Path(sys.argv[1]))
key = signing.load(paths)
archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
sink = archive.open_record(sys.argv[2], "email", "p12345", "2026-03-01T09:00:00Z", "message")
sink.write(b"complete record")
sink.close()
sink = archive.open_record(sys.argv[2], "web", "p12345", "2026-03-01T09:00:01Z", "response")
sink.write(bytes(range(256)) * 1024)
print("ready", flush=True)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def _writer(data: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), REF, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_recover_seals_a_cut_off_segment_once_and_audits_it(lbm: Lbm) -> None:
    KeyStore(DataPaths(lbm.data_dir)).create_authorisation_key(REF, [age.generate()[1]])
    proc = _writer(lbm.data_dir, "kill")
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    code, problems, _ = _verify(lbm, REF)
    assert code == 1 and "segment has no manifest and no writer" in problems[0]
    result = lbm("archive", "recover", check=True)
    assert result.stdout.strip() == f"sealed as truncated: {REF}/000001"
    code, problems, out = _verify(lbm)
    assert code == 0 and f"truncated: {REF}/000001" in out
    actions = [e["action"] for e in _entries(lbm.data_dir)]
    assert actions[-2:] == ["segment_truncated", "archive_recovered"]
    recovered = _entries(lbm.data_dir)[-1]
    assert recovered["refs"] == [REF]
    assert recovered["fields"] == {"segments": [f"{REF}/000001"], "trigger": "command"}
    again = lbm("archive", "recover", REF, check=True)  # idempotent: nothing new, no entry
    assert again.stdout.strip() == "nothing to recover"
    assert [e["action"] for e in _entries(lbm.data_dir)] == actions
    # the truncated segment is cross-checked like any other seal
    (lbm.data_dir / "keystore" / REF / "000001.age").unlink()
    code, problems, _ = _verify(lbm)
    assert code == 1 and f"{REF}/000001: wrapped segment key" in problems[0]


def test_recover_is_refused_while_a_writer_holds_the_archive(lbm: Lbm) -> None:
    KeyStore(DataPaths(lbm.data_dir)).create_authorisation_key(REF, [age.generate()[1]])
    proc = _writer(lbm.data_dir, "wait")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        before = len(_entries(lbm.data_dir))
        for args in ((), (REF,)):
            refused = lbm("archive", "recover", *args)
            assert refused.returncode == 1
            assert f"segment {REF}/000001 is held by a running writer" in refused.stderr
        assert len(_entries(lbm.data_dir)) == before
        assert not (lbm.data_dir / "archive" / REF / "000001.manifest.json").exists()
    finally:
        proc.kill()
        proc.wait()
    assert lbm("archive", "recover", check=True).stdout.startswith("sealed as truncated")


def test_recover_never_reseals_a_deleted_manifest(lbm: Lbm) -> None:
    """Deleting a sealed segment's manifest and asking recovery to seal it "as truncated"
    would launder the deletion: recovery leaves it alone and says so."""
    _archive(lbm.data_dir, segments=2)
    (lbm.data_dir / "archive" / REF / "000002.manifest.json").unlink()
    result = lbm("archive", "recover")
    assert result.returncode == 1
    assert f"left alone: {REF}/000002: sealed on record but its manifest is missing" in (
        result.stdout
    )
    assert not (lbm.data_dir / "archive" / REF / "000002.manifest.json").exists()
    code, problems, _ = _verify(lbm, REF)
    assert code == 1
    assert any(f"{REF}/000002: manifest 000002.manifest.json is missing" in p for p in problems)


def test_recover_arguments(lbm: Lbm) -> None:
    assert lbm("archive", "recover", check=True).stdout.strip() == "nothing to recover"
    missing = lbm("archive", "recover", "NOPE")
    assert missing.returncode == 1 and "NOPE: no archive" in missing.stderr
    assert lbm("archive", "recover", "../x").returncode == 2


def test_a_reseal_after_a_deleted_manifest_is_reported(lbm: Lbm) -> None:
    """A daemon's start-up recovery does not read the audit log: if someone deletes the newest
    manifest and a daemon then re-seals that segment "as truncated", the log holds two seals."""
    _archive(lbm.data_dir, segments=2)
    paths = DataPaths(lbm.data_dir)
    (paths.archive / REF / "000002.manifest.json").unlink()
    key = signing.load(paths)
    audit = AuditLog(paths, key, Clock(), witness=False)
    assert Archive(paths, key, Clock(), audit=audit).recover() == [f"{REF}/000002"]
    code, problems, _ = _verify(lbm, REF)
    assert code == 1
    assert any(f"{REF}/000002: sealed twice" in p for p in problems), problems


def test_pinned_verify_refuses_an_archive_signed_by_a_swapped_in_key(lbm: Lbm) -> None:
    """Whoever can write the data dir swaps in a gateway key of their own and writes a forged
    archive (and its audit entries) with it. Trusting every key in keys/, verify sees a
    consistent archive; pinned to the line `lbm status` printed before, it refuses."""
    _archive(lbm.data_dir, segments=1)
    status = lbm("status", "--json", check=True)
    pin = lbm.data_dir.parent / "pin.allowed_signers"
    pin.write_text(json.loads(status.stdout)["allowed_signers"] + "\n")
    ok = lbm("archive", "verify", "--allowed-signers", str(pin))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "internal consistency only" not in ok.stdout
    keys = lbm.data_dir / "keys"
    for name in ("gateway_ed25519", "gateway_ed25519.pub"):
        (keys / name).unlink()
    signing.create(DataPaths(lbm.data_dir), "forger")
    _archive(lbm.data_dir, OTHER, segments=1, audited=False)  # the log refuses the forger's key
    loose = lbm("archive", "verify", OTHER)
    assert loose.returncode == 0 and "internal consistency only" in loose.stdout, loose.stdout
    pinned = lbm("archive", "verify", OTHER, "--allowed-signers", str(pin))
    assert pinned.returncode == 1, pinned.stdout
    assert any(OTHER in line for line in pinned.stdout.splitlines() if "problem" in line)
    # the original archive still verifies from the pin, its key gone from keys/
    assert lbm("archive", "verify", REF, "--allowed-signers", str(pin)).returncode == 0

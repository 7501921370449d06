"""`lbm archive collateral`: a record removed by two people, checked with Debian's `age` by hand.

One data directory for the module. Segment 1 holds records A, B (the collateral: a third party's
message, large enough to span age chunks), C and E; segment 2 holds D. Investigators: inv1
(login root), inv2 (login daemon), inv3 (login bin, the same principal as inv1: one person with
two entries). The scenario, run once by the `case` fixture through the real CLI:

1. inv1 proposes removing B; inv2 proposes removing C (both still in segment 1);
2. refused: inv1 approving their own proposal; inv2's login with inv1's identity (a borrowed
   key); inv3 (same person as inv1); inv2 with an identity that is not a holder of REF's key;
3. inv2 approves B (segment 1 -> 3), then inv1 approves C, which now lives in segment 3
   (segment 3 -> 4).

A copy of segments 1 and 3 and of the whole key store is taken before the approvals (a backup).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lbm_testing import REPO, Lbm, grant_argv

from appliance.evidence import collateral as coll
from store import agefile as age
from store import investigators, signing
from store import sqlite as store_sqlite
from store.archive import Archive
from store.archive_audit import cross_check, on_record
from store.audit import AuditLog
from store.clock import Clock
from store.framing import read_records
from store.manifest import verify_all
from store.paths import DataPaths
from store.segment import canonical

REF = "AUTH-COLL-1"
LOGINS = {"inv1": 0, "inv2": 1, "inv3": 2}  # root, daemon, bin
CANARY_B = b"CANARY-COLLATERAL-B-7f3a9c"
CANARY_C = b"CANARY-COLLATERAL-C-51d0e2"
B_BODY = os.urandom(90_000) + CANARY_B + os.urandom(90_000)  # spans three 64 KiB age chunks
RECORDS_1 = {
    "A": ("email", "message", b"From: p12345@force.example\r\n\r\nkeep A KEEP-A-11\r\n"),
    "B": ("email", "message", b"From: x@outside.example\r\n\r\n" + B_BODY),
    "C": ("web", "http-response-body", b"<p>" + CANARY_C + b"</p>"),
    "E": ("packets", "pcapng", b"\x0a\x0d\x0d\x0a KEEP-E-55 blocks"),
}
RECORD_D = ("email", "message", b"From: p12345@force.example\r\n\r\nsegment two KEEP-D-77\r\n")


def run_as(data: Path, login: str, *args: str, input: str | None = None) -> Any:
    """The real CLI with /proc/self/loginuid set to `login`'s uid (the acting login user)."""
    script = 'echo "$0" > /proc/self/loginuid && exec "$@"'
    cmd = ["sh", "-c", script, str(LOGINS[login]), sys.executable, "-m",
           "appliance.cli.main", "--data-dir", str(data), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60, input=input)


def audit_entries(data: Path, action: str) -> list[dict[str, Any]]:
    lines = (data / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


@dataclass
class Case:
    data: Path
    tmp: Path
    keys: dict[str, Path]
    ids: dict[str, str]
    backup: Path
    results: dict[str, Any] = field(default_factory=dict)


def _write_records(paths: DataPaths, groups: list[list[tuple[str, str, bytes]]]) -> list[str]:
    key = signing.load(paths)
    ids = []
    for group in groups:
        archive = Archive(paths, key, Clock(), audit=AuditLog(paths, key, Clock(), witness=False))
        for channel, kind, content in group:
            sink = archive.open_record(REF, channel, "p12345", "2026-03-01T09:00:00Z", kind)
            for i in range(0, len(content), 50_000):
                sink.write(content[i : i + 50_000])
            ids.append(sink.close())
        archive.close()
    return ids


def context(data: Path, login: str) -> coll.Context:
    """In-process steps (the CLI is thin): the evidence layer acting as `login`."""
    paths = DataPaths(data)
    key = signing.load(paths)
    audit = AuditLog(paths, key, Clock(), witness=False)
    return coll.Context(paths, key, Clock(), audit, login, [])


def attempt(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except coll.Refused as exc:
        return exc


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    tmp = tmp_path_factory.mktemp("collateral")
    probe = subprocess.run(["sh", "-c", "echo 1 > /proc/self/loginuid"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot set /proc/self/loginuid here (needs root with CAP_AUDIT_CONTROL)")
    lbm = Lbm(tmp / "data")
    lbm("init", check=True)
    keys: dict[str, Path] = {}
    conn = store_sqlite.connect(DataPaths(lbm.data_dir).registry)
    for name, principal, user in (("inv1", "p501", "root"), ("inv2", "p502", "daemon"),
                                  ("inv3", "p501", "bin"), ("x", "", "")):  # fmt: skip
        secret, public = age.generate()
        keys[name] = tmp / f"{name}.key"
        keys[name].write_text(age.identity_file_text(secret))
        if principal:
            investigators.add(conn, name, public, principal, "2026-01-01T00:00:00Z", user)
    conn.close()
    lbm(*grant_argv(REF, channel="email", investigator="inv1,inv2,inv3"), check=True)
    paths = DataPaths(lbm.data_dir)
    order = list(RECORDS_1)
    ids = _write_records(paths, [[RECORDS_1[k] for k in order], [RECORD_D]])
    c = Case(lbm.data_dir, tmp, keys, dict(zip([*order, "D"], ids, strict=True)), tmp / "backup")
    shutil.copytree(lbm.data_dir / "keystore", c.backup / "keystore")
    r = c.results
    d, k = c.data, {n: p.read_text() for n, p in keys.items()}
    r["propose_b"] = run_as(d, "inv1", "archive", "collateral", "propose", REF, "--record",
                            c.ids["B"], "--reason", "third party's private mail",
                            "--identity", str(keys["inv1"]), "--json")  # fmt: skip
    pb = json.loads(r["propose_b"].stdout)["id"]
    as1, as2, as3 = (context(d, u) for u in ("root", "daemon", "bin"))
    pc = coll.propose(as2, REF, c.ids["C"], "unrelated page", k["inv2"]).id
    approve = ("archive", "collateral", "approve")
    r["self_cli"] = run_as(d, "inv1", *approve, str(pb), "--identity", str(keys["inv1"]))
    r["self"] = attempt(coll.approve, as1, pb, k["inv1"])
    r["borrowed"] = attempt(coll.approve, as2, pb, k["inv1"])
    r["same_person"] = attempt(coll.approve, as3, pb, k["inv3"])
    r["not_holder"] = attempt(coll.approve, as2, pb, k["x"])
    r["keys_after_refusals"] = sorted(os.listdir(d / "keystore" / REF))
    shutil.copy(d / "archive" / REF / "000001.age", c.backup / "000001.age")
    r["approve_b"] = run_as(d, "inv2", *approve, str(pb), "--identity", "-", "--json",
                            input=k["inv2"])  # fmt: skip
    shutil.copy(d / "archive" / REF / "000003.age", c.backup / "000003.age")
    shutil.copy(d / "keystore" / REF / "000003.age", c.backup / "keystore" / REF / "000003.age")
    r["approve_c"] = attempt(coll.approve, as1, pc, k["inv1"])
    r["again"] = attempt(coll.approve, as1, pc, k["inv1"])
    return c


def age_decrypt(identity: Path, path: Path, out: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", "-d", "-i", str(identity), "-o", str(out), str(path)],
                          capture_output=True)  # fmt: skip


def test_proposals_and_approvals_succeed(case: Case) -> None:
    r = case.results
    for step in ("propose_b", "approve_b"):
        assert r[step].returncode == 0, (step, r[step].stderr)
    b = json.loads(r["approve_b"].stdout)
    assert (b["segment"], b["new_segment"], b["approver"]) == (f"{REF}/000001", f"{REF}/000003",
                                                               "inv2")  # fmt: skip
    # C was proposed in segment 1 and is removed from its replacement, segment 3
    proposal, removal = r["approve_c"]
    assert (proposal.old_segment, proposal.new_segment, proposal.approver) == (
        f"{REF}/000003", f"{REF}/000004", "inv1")  # fmt: skip
    assert removal.records_kept == 2 and removal.key_destroyed
    assert isinstance(r["again"], coll.Refused) and r["again"].code == "not_open"
    assert r["self_cli"].returncode == 1
    assert "refused (self_approval)" in r["self_cli"].stderr


@pytest.mark.parametrize(
    ("who", "code"),
    [("self", "self_approval"), ("borrowed", "self_approval"),
     ("same_person", "self_approval"), ("not_holder", "not_holder")],
)  # fmt: skip
def test_refused_approvals_change_nothing_and_are_audited(case: Case, who: str, code: str) -> None:
    result = case.results[who]
    assert isinstance(result, coll.Refused) and result.code == code, result
    assert "000001.age" in case.results["keys_after_refusals"]  # nothing destroyed by them
    refused = audit_entries(case.data, "collateral_refused")
    assert any(e["fields"]["code"] == code and e["refs"] == [REF] for e in refused)


def test_replacement_decrypted_by_hand_with_age_lacks_only_the_removed_records(
    case: Case, tmp_path: Path
) -> None:
    """DECISIONS.md "Keys": auth key, then segment key, then segment, with Debian's age."""
    ks, arch = case.data / "keystore" / REF, case.data / "archive" / REF
    auth = tmp_path / "auth.key"
    assert age_decrypt(case.keys["inv2"], ks / "auth.age", auth).returncode == 0
    seg_key, plain = tmp_path / "seg.key", tmp_path / "plain"
    assert age_decrypt(auth, ks / "000004.age", seg_key).returncode == 0
    assert age_decrypt(seg_key, arch / "000004.age", plain).returncode == 0
    text = plain.read_bytes()
    assert CANARY_B not in text and CANARY_C not in text
    for at in range(0, len(B_BODY) - 32, 20_000):  # no piece of B's body either
        assert B_BODY[at : at + 32] not in text
    kept = read_records(io.BytesIO(text))  # the others keep their ids and exact bytes
    assert [(r.header["id"], r.data, r.complete) for r in kept] == [
        (case.ids[name], RECORDS_1[name][2], True) for name in ("A", "E")
    ]
    index = [json.loads(x) for x in (arch / "000004.index.jsonl").read_text().splitlines()]
    assert [i["id"] for i in index] == [case.ids["A"], case.ids["E"]]


def test_copies_of_replaced_segments_no_longer_decrypt(case: Case, tmp_path: Path) -> None:
    ks = case.data / "keystore" / REF
    assert not (ks / "000001.age").exists() and not (ks / "000003.age").exists()
    auth = tmp_path / "auth.key"
    assert age_decrypt(case.keys["inv1"], ks / "auth.age", auth).returncode == 0
    for old in ("000001.age", "000003.age"):
        copy = case.backup / old
        assert copy.read_bytes() == (case.data / "archive" / REF / old).read_bytes()
        for wrapped in sorted(ks.glob("0*.age")):  # every segment key the gateway still has
            key = tmp_path / f"{wrapped.name}.key"
            assert age_decrypt(auth, wrapped, key).returncode == 0
            result = age_decrypt(key, copy, tmp_path / "out")
            assert result.returncode != 0 and b"no identity matched" in result.stderr
    # the key store backed up apart still opens them: hence "back up keystore/ apart"
    held = tmp_path / "held.key"
    assert age_decrypt(auth, case.backup / "keystore" / REF / "000001.age", held).returncode == 0
    assert age_decrypt(held, case.backup / "000001.age", tmp_path / "o").returncode == 0


def test_verify_accepts_the_amended_chain(case: Case) -> None:
    result = run_as(case.data, "inv1", "archive", "verify", REF, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["amended"] == [
        f"{REF}/000001 -> {REF}/000003 (record {case.ids['B']} removed, proposal 1)",
        f"{REF}/000003 -> {REF}/000004 (record {case.ids['C']} removed, proposal 2)",
    ]


def _copy(case: Case, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(case.data, data, symlinks=True)
    return data


def _verify_problems(data: Path, *, cli: bool = False) -> list[str]:
    """`lbm archive verify REF` (cli), or in process the same checks the command makes."""
    if cli:
        result = run_as(data, "inv1", "archive", "verify", REF, "--json")
        assert result.returncode == 1
        return list(json.loads(result.stdout)["problems"])
    paths = DataPaths(data)
    report = verify_all(paths.archive, signing.load_public_keys(paths), REF)
    cross_check(paths, on_record(context(data, "root").audit_log.entries()), report, REF)
    assert not report.ok
    return report.problems


def test_verify_fails_if_the_amendment_is_altered(case: Case, tmp_path: Path) -> None:
    data = _copy(case, tmp_path)
    path = data / "archive" / REF / "000003.manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest["amendment"]["removed_record"] = case.ids["A"]
    path.write_bytes(canonical(manifest) + b"\n")
    problems = _verify_problems(data, cli=True)
    assert any("000003: manifest signature does not verify" in p for p in problems)


def test_verify_fails_on_an_amendment_resigned_with_the_gateway_key(
    case: Case, tmp_path: Path
) -> None:
    """Someone holding the gateway key rewrites the amendment (and the chain head) to claim a
    different record was removed: the indexes and the audit log disagree with it."""
    data = _copy(case, tmp_path)
    key = signing.load(DataPaths(data))
    directory = data / "archive" / REF
    path = directory / "000004.manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest.pop("sig")
    manifest["amendment"]["removed_record"] = case.ids["E"]
    manifest["sig"] = key.sign(canonical(manifest))
    path.write_bytes(canonical(manifest) + b"\n")
    head = json.loads((directory / "chain.json").read_bytes())
    head.pop("sig")
    head["manifest_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    head["sig"] = key.sign(canonical(head))
    (directory / "chain.json").write_bytes(canonical(head) + b"\n")
    problems = _verify_problems(data)
    assert any("replacement's records are not" in p for p in problems), problems
    assert any("differs from the audit log's collateral_approve" in p for p in problems)


def test_verify_fails_if_a_destroyed_key_is_restored(case: Case, tmp_path: Path) -> None:
    data = _copy(case, tmp_path)
    shutil.copy(case.backup / "keystore" / REF / "000001.age", data / "keystore" / REF)
    problems = _verify_problems(data)
    assert any("000001: collateral removal on record" in p for p in problems), problems


def test_export_skips_shredded_segments_and_exports_the_replacement(
    case: Case, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_as(case.data, "inv1", "archive", "export-raw", REF, "--identity",
                    str(case.keys["inv1"]), "--out", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    by_segment = {r["segment"]: r for r in json.loads(result.stdout)}
    assert by_segment[f"{REF}/000001"].get("destroyed") and by_segment[f"{REF}/000003"].get(
        "destroyed"
    )
    assert by_segment[f"{REF}/000004"]["records"] == 2
    files = sorted(p.relative_to(out / REF).as_posix() for p in (out / REF).rglob("*.*"))
    assert files == ["000002/1.eml", "000002/records.jsonl", "000004/1.eml",
                     "000004/4.pcapng", "000004/records.jsonl"]  # fmt: skip
    everything = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert CANARY_B not in everything and CANARY_C not in everything
    assert (out / REF / "000004" / "1.eml").read_bytes() == RECORDS_1["A"][2]
    listed = run_as(case.data, "inv1", "archive", "records", REF, "--json")
    assert [i["id"] for i in json.loads(listed.stdout)] == [case.ids[n] for n in "DAE"]


def test_audit_keeps_a_tombstone_and_no_content(case: Case) -> None:
    approvals = audit_entries(case.data, "collateral_approve")
    assert [
        (e["fields"]["record_id"], e["fields"]["proposer"], e["fields"]["approver"])
        for e in approvals
    ] == [(case.ids["B"], "inv1", "inv2"), (case.ids["C"], "inv2", "inv1")]
    assert approvals[0]["fields"]["reason"] == "third party's private mail"
    assert approvals[0]["fields"]["old_segment_key_destroyed"] is True
    assert [e["fields"]["record_id"] for e in audit_entries(case.data, "collateral_propose")] == [
        case.ids["B"],
        case.ids["C"],
    ]
    for path in case.data.rglob("*"):  # no plaintext of B or C anywhere in the data dir
        if path.is_file():
            blob = path.read_bytes()
            assert CANARY_B not in blob and CANARY_C not in blob, path


def test_list_shows_proposals_to_investigators_only(case: Case) -> None:
    listed = coll.visible(context(case.data, "daemon"), REF)
    items = [p for p in listed if p.record_id in (case.ids["B"], case.ids["C"])]
    assert [(p.record_id, p.state, p.proposer, p.approver) for p in items] == [
        (case.ids["B"], "approved", "inv1", "inv2"),
        (case.ids["C"], "approved", "inv2", "inv1"),
    ]
    # an operator login mapped to no investigator learns nothing
    refused = attempt(coll.visible, context(case.data, "messagebus"), None)
    assert isinstance(refused, coll.Refused) and REF not in str(refused)


def test_bad_proposals_are_refused(case: Case) -> None:
    d, inv1 = case.data, case.keys["inv1"].read_text()
    argv = ("archive", "collateral", "propose", REF, "--record", "OTHER/000001/1", "--reason", "r")
    other_ref = run_as(d, "inv1", *argv, "--identity", str(case.keys["inv1"]))
    assert other_ref.returncode == 2 and "not a record id of AUTH-COLL-1" in other_ref.stderr
    as1 = context(d, "root")
    cases = {
        "unknown_record": (as1, f"{REF}/000002/9", inv1),
        "already_removed": (as1, case.ids["B"], inv1),
        "no_access": (context(d, "messagebus"), case.ids["A"], inv1),  # not an investigator
        "identity_mismatch": (as1, case.ids["A"], case.keys["inv2"].read_text()),
    }
    for code, (ctx, record_id, identity) in cases.items():
        result = attempt(coll.propose, ctx, REF, record_id, "reason", identity)
        assert isinstance(result, coll.Refused) and result.code == code, (code, result)
    first = coll.propose(as1, REF, case.ids["D"], "reason", inv1)
    again = attempt(coll.propose, context(d, "daemon"), REF, case.ids["D"], "again",
                    case.keys["inv2"].read_text())  # fmt: skip
    assert isinstance(again, coll.Refused) and again.code == "duplicate"
    assert str(first.id) in str(again)

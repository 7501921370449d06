"""Evidence bundles end to end: `lbm archive bundle` on the gateway (ciphertext only, signed by the
gateway key), `lbm evidence open` on the investigator's side (decrypted in memory, MANIFEST.json
signed with the investigator's SSH key), `lbm archive verify-export`, and stock
`ssh-keygen -Y verify` on both signatures. Everything real: `lbm init`, grants, investigators
registered with `--sign-key`, the archive's own writer, age keys, ssh-keygen, tshark.

One data directory for the module; each test works on its own copies of bundles.
"""

from __future__ import annotations

import email
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bundle_support import (
    REF,
    REF_OTHER,
    REF_SUBJECT,
    WEB_BODY,
    Setup,
    audit_entries,
    bundle_files,
    inproc,
    make_setup,
    manifest_files,
    ssh_verify,
)
from mitmproxy.io import FlowReader

from appliance.evidence import bundle_common as common
from appliance.evidence.access import AccessRefused
from appliance.evidence.bundle import authorise, make_bundle
from appliance.evidence.bundle_common import now_utc
from appliance.evidence.opening import OpenRequest, check_bundle, open_bundle
from appliance.evidence.verify_export import verify_export
from store import agefile as age
from store import sshsig

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None or shutil.which("tshark") is None,
    reason="ssh-keygen (openssh-client) and tshark (Debian packages) are needed",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def opened(setup: Setup) -> tuple[Path, Path]:
    """REF bundled by the CLI, then opened by the CLI with the identity on stdin."""
    bundle = setup.tmp / "bundle-full"
    setup.lbm("archive", "bundle", REF, "--out", str(bundle), check=True)
    out = setup.tmp / "opened-full"
    result = setup.lbm(
        "evidence", "open", str(bundle), "--identity", "-", "--allowed-signers",
        str(setup.gateway_signers), "--sign-key", str(setup.ssh_key), "--out", str(out),
        input=setup.identity_text, check=True,
    )  # fmt: skip
    assert "missing" not in result.stdout
    return bundle, out


def _open(setup: Setup, bundle: Path, out: Path, *extra: str) -> Any:
    return setup.lbm(
        "evidence", "open", str(bundle), "--identity", str(setup.identity), "--allowed-signers",
        str(setup.gateway_signers), "--sign-key", str(setup.ssh_key), "--out", str(out), *extra,
    )  # fmt: skip


def test_bundle_holds_ciphertext_only_and_both_signatures_verify_with_ssh_keygen(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    bundle, out = opened
    doc = json.loads((bundle / common.BUNDLE).read_bytes())
    listed = {f["path"] for f in doc["files"]}
    assert f"archive/{REF}/000001.age" in listed and f"keystore/{REF}/auth.age" in listed
    assert f"keystore/{REF}/000002.age" in listed and f"archive/{REF}/chain.json" in listed
    assert doc["authorisation"]["ref"] == REF and doc["authorisation"]["case_type"] == "criminal"
    assert doc["authorisation"]["channels"] == ["email", "packets", "web"]
    assert (
        doc["investigator"]["ssh_key"] == setup.ssh_pub.split()[0] + " " + setup.ssh_pub.split()[1]
    )
    # nothing decrypted: no record content anywhere in the bundle
    for path in bundle.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert setup.mail_canary not in data and setup.packet_canary not in data, path
            assert b"WEB-CANARY" not in data, path
    # the gateway signature, with the line `lbm status` publishes, by stock OpenSSH
    ssh_verify(setup.gateway_signers, setup.gateway_id, bundle / common.BUNDLE)
    # the investigator's signature, with the allowed-signers line written beside it
    ssh_verify(out / common.SIGNER_FILE, "inv1", out / common.MANIFEST)
    # and the audit names the bundle's hash, never content
    entry = next(e for e in audit_entries(setup.lbm) if e["action"] == "bundle")
    assert entry["fields"]["sha256"] == setup.sha256(bundle / common.BUNDLE)
    assert entry["fields"]["investigator"] == "inv1" and entry["refs"] == [REF]
    indexes = (setup.lbm.data_dir / "archive" / REF).glob("*.index.jsonl")
    assert entry["fields"]["records"] == sum(len(p.read_text().splitlines()) for p in indexes)


def test_opened_bundle_has_every_record_private_and_a_complete_manifest(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    _bundle, out = opened
    manifest = json.loads((out / common.MANIFEST).read_bytes())
    assert manifest["bundle"]["sha256"] == setup.sha256(out / common.BUNDLE)
    assert manifest["authorisation"]["ref"] == REF
    assert manifest["notice_versions"] == ["2026-01"]
    assert manifest["gateway"]["id"] == setup.gateway_id
    assert manifest["signer"]["kind"] == "investigator" and manifest["opened_by"]
    assert manifest["missing_records"] == [] and manifest["incomplete_records"] == []
    exported = {rid for f in manifest["files"] for rid in f["record_ids"]}
    assert set(setup.records) < exported  # and the web flow's records
    # web: mitmproxy's own reader loads the flow file, with the archived bodies
    with (out / "web/flows.mitm").open("rb") as fh:
        (flow,) = list(FlowReader(fh).stream())
    assert flow.id == setup.web_flow and flow.request.content == b"q=evidence"
    assert flow.response is not None and flow.response.content == WEB_BODY
    # email: the .eml holding each message record is the message, byte for byte
    for rid, (channel, content) in setup.records.items():
        if channel != "email":
            continue
        (path,) = [f["path"] for f in manifest["files"] if rid in f["record_ids"]
                   and f["path"].endswith(".eml")]  # fmt: skip
        data = (out / path).read_bytes()
        assert data == content
        assert email.message_from_bytes(data)["Subject"]
    # packets: tshark reads the pcapng and finds every archived packet
    pcaps = [out / f["path"] for f in manifest["files"] if f["path"].endswith(".pcapng")]
    frames = 0
    for pcap in pcaps:
        shown = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        frames += len(shown.stdout.split())
    assert frames == setup.packet_count
    for path in [p for p in out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        if path.is_file():
            assert b"AGE-SECRET-KEY" not in path.read_bytes(), path  # the identity is not stored
    ok = setup.lbm("archive", "verify-export", str(out), "--allowed-signers",
                   str(setup.gateway_signers))  # fmt: skip
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "opened" in ok.stdout and "ok" in ok.stdout


@pytest.mark.parametrize("attack", ["changed", "extra", "removed"])
def test_a_tampered_bundle_is_refused_naming_the_file(
    setup: Setup, opened: tuple[Path, Path], attack: str
) -> None:
    bundle, _ = opened
    copy = setup.tmp / f"tampered-{attack}"
    shutil.copytree(bundle, copy)
    target = f"archive/{REF}/000002.age"
    if attack == "changed":
        data = bytearray((copy / target).read_bytes())
        data[len(data) // 2] ^= 1
        (copy / target).write_bytes(bytes(data))
        expected = f"changed file: {target}"
    elif attack == "extra":
        target = f"archive/{REF}/000003.age"
        (copy / target).write_bytes(b"age-encryption.org/v1\n")
        expected = f"extra file: {target}"
    else:
        (copy / target).unlink()
        expected = f"missing file: {target}"
    checked = verify_export(copy, setup.gateway_signers)
    assert not checked.ok and any(p.startswith(expected) for p in checked.problems)
    if attack != "changed":  # (a segment's hash is checked as it is decrypted, below)
        with pytest.raises(common.EvidenceError, match=expected):
            check_bundle(copy, setup.gateway_signers)
    else:  # the CLI path, once: refused, nothing written
        out = setup.tmp / "refused-open"
        result = _open(setup, copy, out)
        assert result.returncode == 1 and expected in result.stderr
        assert "Traceback" not in result.stderr and not out.exists()
        cli = setup.lbm("archive", "verify-export", str(copy), "--allowed-signers",
                        str(setup.gateway_signers))  # fmt: skip
        assert cli.returncode == 1 and expected in cli.stdout


def test_a_key_substituted_inside_the_bundle_is_not_trusted(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    """Mallory edits BUNDLE.json (her own signing key as the investigator's), re-signs it with
    her key and ships an allowed-signers file naming her key inside the bundle: opening trusts
    only the allowed-signers file given on the command line."""
    bundle, _ = opened
    copy = setup.tmp / "substituted"
    shutil.copytree(bundle, copy)
    mallory = setup.new_ssh_key("mallory")
    doc = json.loads((copy / common.BUNDLE).read_bytes())
    doc["investigator"]["ssh_key"] = " ".join(mallory[1].split()[:2])
    (copy / common.BUNDLE).write_bytes(common.encode(doc))
    (copy / common.BUNDLE_SIG).unlink()
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(mallory[0]), "-n",
                    common.NAMESPACE, str(copy / common.BUNDLE)], check=True)  # fmt: skip
    inside = copy / "allowed_signers"
    inside.write_text(f'{setup.gateway_id} namespaces="lbm-evidence" {mallory[1]}\n')
    result = _open(setup, copy, setup.tmp / "never")
    assert result.returncode == 1
    assert "BUNDLE.json.sig: the gateway signature over BUNDLE.json is refused" in result.stderr
    assert "is not in the allowed signers" in result.stderr
    # even with that file given, the extra file is named
    checked = verify_export(copy, inside)
    assert "extra file: allowed_signers (not listed; added after signing)" in checked.problems


def test_a_resigned_manifest_in_an_opened_bundle_is_refused(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    """Mallory changes an exported file, rewrites MANIFEST.json and signs it with her own key,
    swapping the allowed-signers line beside it: verify-export checks MANIFEST.json.sig against
    the key the gateway-signed BUNDLE.json registers, and names both files."""
    _, out = opened
    copy = setup.tmp / "resigned"
    shutil.copytree(out, copy)
    mallory = setup.new_ssh_key("mallory2")
    manifest = json.loads((copy / common.MANIFEST).read_bytes())
    first = manifest["files"][0]
    (copy / first["path"]).write_bytes(b"altered evidence")
    first["sha256"], first["size"] = setup.sha256(copy / first["path"]), len(b"altered evidence")
    (copy / common.MANIFEST).write_bytes(common.encode(manifest))
    (copy / common.MANIFEST_SIG).unlink()
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(mallory[0]), "-n",
                    common.NAMESPACE, str(copy / common.MANIFEST)], check=True)  # fmt: skip
    (copy / common.SIGNER_FILE).write_text(f'inv1 namespaces="lbm-evidence" {mallory[1]}\n')
    checked = verify_export(copy, setup.gateway_signers)
    assert any(p.startswith("MANIFEST.json.sig: not a signature") for p in checked.problems)
    assert any(p.startswith(f"changed file: {common.SIGNER_FILE}") for p in checked.problems)


def test_opening_with_an_unregistered_signing_key_is_refused(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    bundle, _ = opened
    other = setup.new_ssh_key("other")
    out = setup.tmp / "other-key"
    result = setup.lbm(
        "evidence", "open", str(bundle), "--identity", str(setup.identity), "--allowed-signers",
        str(setup.gateway_signers), "--sign-key", str(other[0]), "--out", str(out),
    )  # fmt: skip
    assert (
        result.returncode == 1 and "is not the signing key BUNDLE.json registers" in result.stderr
    )
    assert not out.exists()


def test_an_existing_output_directory_is_never_written_over(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    bundle, out = opened
    before = manifest_files(out)
    again = _open(setup, bundle, out)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert manifest_files(out) == before
    acting, auth = authorise(setup.side(), REF)
    with pytest.raises(common.EvidenceError, match="inside the data directory"):
        make_bundle(setup.side(), REF, setup.lbm.data_dir / "exports", acting, auth)


def test_access_refusals_are_audited(setup: Setup) -> None:
    lbm = setup.lbm
    # root's investigator (inv1) is not assigned to REF_OTHER (inv2 is)
    out = setup.tmp / "refused"
    result = lbm("archive", "bundle", REF_OTHER, "--out", str(out))
    assert result.returncode == 1 and "neither assigned" in result.stderr and not out.exists()
    refused = [e for e in audit_entries(lbm) if e["action"] == "export_refused"]
    assert refused[-1]["refs"] == [REF_OTHER] and "neither assigned" in refused[-1]["fields"]["why"]
    # the rest in process (what the command hands appliance.evidence.bundle; tests run as root)
    # the subject of an authorisation may never take its evidence, even as a custodian
    custodian = setup.side(custodians=(setup.recipient,))
    with pytest.raises(AccessRefused, match=f"investigator inv1 is the subject of {REF_SUBJECT}"):
        authorise(custodian, REF_SUBJECT)
    acting, _auth = authorise(custodian, REF_OTHER)  # the same custodian, another REF
    assert acting.basis == "custodian"
    # an unmapped login user
    with pytest.raises(AccessRefused, match="not mapped to a registered investigator"):
        authorise(setup.side(login="mallory"), REF)
    # assigned after the key was wrapped: a rewrap is due before a bundle
    inproc(lbm.data_dir, "auth", "assign", REF_OTHER, "inv1")
    with pytest.raises(AccessRefused, match=f"lbm keys rewrap {REF_OTHER}"):
        authorise(setup.side(), REF_OTHER)


def test_a_record_selection_bundles_only_its_segment(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    rid = f"{REF}/000002/1"
    bundle = setup.tmp / "bundle-one"
    setup.lbm("archive", "bundle", REF, "--out", str(bundle), "--record", rid, check=True)
    listed = bundle_files(bundle)
    assert f"archive/{REF}/000002.age" in listed and f"archive/{REF}/000001.age" not in listed
    assert f"archive/{REF}/000001.manifest.json" in listed  # the whole chain travels
    assert verify_export(bundle, setup.gateway_signers).ok
    out = setup.tmp / "opened-one"
    assert _open(setup, bundle, out).returncode == 0
    manifest = json.loads((out / common.MANIFEST).read_bytes())
    assert {r for f in manifest["files"] for r in f["record_ids"]} == {rid}
    bad = setup.lbm("archive", "bundle", REF, "--out", str(bundle) + "x", "--record", "x/1")
    assert bad.returncode == 2 and "not a record id" in bad.stderr


def test_a_truncated_segment_lists_its_missing_records(setup: Setup) -> None:
    ref, expected_missing, cut = setup.truncated
    bundle = setup.tmp / "bundle-trunc"
    setup.lbm("archive", "bundle", ref, "--out", str(bundle), check=True)
    doc = json.loads((bundle / common.BUNDLE).read_bytes())
    assert doc["segments"][0]["truncated"] is True
    out = setup.tmp / "opened-trunc"
    result = _open(setup, bundle, out, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["missing"] == expected_missing and data["incomplete"] == [cut]
    manifest = json.loads((out / common.MANIFEST).read_bytes())
    assert manifest["missing_records"] == expected_missing
    assert manifest["incomplete_records"] == [cut]


def test_gateway_export_only_when_allowed(setup: Setup) -> None:
    lbm = setup.lbm
    out = setup.tmp / "gw-export"
    config = lbm.data_dir / "lbm.toml"
    original = config.read_text()
    assert "allow_gateway_decrypt = true" in original  # the embedded default
    config.write_text(
        original.replace("allow_gateway_decrypt = true", "allow_gateway_decrypt = false")
    )
    try:
        result = lbm("archive", "export", REF, "--identity", str(setup.identity), "--out", str(out))
    finally:
        config.write_text(original)
    assert result.returncode == 1 and "allow_gateway_decrypt = false" in result.stderr
    assert not out.exists()
    refused = [e for e in audit_entries(lbm) if e["action"] == "export_refused"][-1]
    assert "allow_gateway_decrypt" in refused["fields"]["why"]
    # allowed (the embedded default): bundled and opened on the gateway, signed by its key
    result = lbm("archive", "export", REF, "--identity", str(setup.identity), "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / common.MANIFEST).read_bytes())
    assert manifest["signer"]["kind"] == "gateway" and manifest["mode"] == "gateway-export"
    ssh_verify(setup.gateway_signers, setup.gateway_id, out / common.MANIFEST)
    assert verify_export(out, setup.gateway_signers).ok
    entry = [e for e in audit_entries(lbm) if e["action"] == "export"][-1]
    assert entry["fields"]["gateway_decrypt"] is True and entry["fields"]["ok"] is True
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".lbm-export-")]


def test_verify_export_needs_the_gateway_key_not_one_from_the_bundle(
    setup: Setup, opened: tuple[Path, Path]
) -> None:
    bundle, _ = opened
    stranger = setup.new_ssh_key("stranger")
    signers = setup.tmp / "stranger.allowed"
    signers.write_text(f"{setup.gateway_id} {stranger[1]}\n")
    checked = verify_export(bundle, signers)
    assert not checked.ok and "not in the allowed signers" in checked.problems[0]


def test_a_wrong_identity_opens_nothing(setup: Setup, opened: tuple[Path, Path]) -> None:
    bundle, _ = opened
    secret, _public = age.generate()
    out = setup.tmp / "wrong-identity"
    request = OpenRequest(bundle, out, age.identity_file_text(secret), setup.gateway_signers,
                          sshsig.load_private_key(setup.ssh_key), "root", now_utc())  # fmt: skip
    with pytest.raises(common.EvidenceError, match=f"authorisation {REF}: cannot unwrap"):
        open_bundle(request)
    assert not out.exists()
    assert not [p for p in setup.tmp.iterdir() if p.name.startswith(".wrong-identity")]


def test_a_signing_key_must_be_an_openssh_ed25519_public_key(setup: Setup) -> None:
    from click.testing import CliRunner

    from appliance.cli import main

    private = setup.ssh_key  # the private half, given by mistake
    rsa = setup.tmp / "rsa.pub"
    rsa.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== someone\n")
    for bad, why in ((private, "not an OpenSSH ssh-ed25519 public key"), (rsa, "ssh-ed25519")):
        result = CliRunner().invoke(main.cli, [
            "--data-dir", str(setup.lbm.data_dir), "keys", "investigator", "add", "inv9",
            setup.recipient, "--principal", "p509", "--sign-key", str(bad)])  # fmt: skip
        assert result.exit_code == 2 and why in result.output, result.output
    listed = inproc(setup.lbm.data_dir, "keys", "investigator", "list", "--json")
    assert "inv9" not in listed
    assert json.loads(listed)[0]["ssh_key"] == " ".join(setup.ssh_pub.split()[:2])


def test_the_ciphertext_hash_covers_every_byte_read_or_not(tmp_path: Path) -> None:
    """The segment hash is computed in 4 MiB pieces beside the reader: every byte counts once,
    whether the age reader read it (lines, chunks across piece boundaries) or not."""
    import hashlib
    import os

    from appliance.evidence.opening_io import HashingFile

    data = b"age-encryption.org/v1\n-> X25519 abc\n" + os.urandom(9 << 20) + b"\ntail"
    path = tmp_path / "seg.age"
    path.write_bytes(data)
    for stop_at in (len(data), 5 << 20, 40):
        with path.open("rb") as raw:
            fh = HashingFile(raw)
            parts, size = [fh.readline(1000), fh.readline(1000)], 0
            while size < stop_at and (piece := fh.read(65552)):
                parts.append(piece)
                size += len(piece)
            assert data.startswith(b"".join(parts))
            assert fh.finish() == hashlib.sha256(data).hexdigest()
            fh.close()
